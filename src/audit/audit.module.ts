import { Module } from '@nestjs/common';
import { AuditController } from './audit.controller';
import { AuditService } from './audit.service';
import { BoundedAuditService } from './bounded-audit.service';

@Module({
  controllers: [AuditController],
  providers: [AuditService, BoundedAuditService],
  exports: [AuditService, BoundedAuditService],
})
export class AuditModule {}
