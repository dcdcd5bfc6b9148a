import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { AuditModule } from '../audit/audit.module';
import { SessionsCleanupTask } from './sessions-cleanup.task';
import { SessionsController } from './sessions.controller';
import { SessionsService } from './sessions.service';

@Module({
  imports: [SessionaryConfigModule, AuditModule],
  controllers: [SessionsController],
  providers: [SessionsService, SessionsCleanupTask],
  exports: [SessionsService, SessionsCleanupTask],
})
export class SessionsModule {}
