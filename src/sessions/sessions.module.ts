import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { AuditModule } from '../audit/audit.module';
import { UsersModule } from '../users/users.module';
import { SessionsCleanupTask } from './sessions-cleanup.task';
import { SessionsController } from './sessions.controller';
import { SessionMaintenanceService } from './session-maintenance.service';
import { SessionsService } from './sessions.service';
import { UserSessionsService } from './user-sessions.service';

@Module({
  imports: [SessionaryConfigModule, AuditModule, UsersModule],
  controllers: [SessionsController],
  providers: [SessionsService, UserSessionsService, SessionMaintenanceService, SessionsCleanupTask],
  exports: [SessionsService, UserSessionsService, SessionMaintenanceService, SessionsCleanupTask],
})
export class SessionsModule {}
