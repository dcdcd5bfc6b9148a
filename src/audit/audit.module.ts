import { Module } from '@nestjs/common';
import { AuditChainService } from './audit-chain.service';
import { AuditCheckpointTask } from './audit-checkpoint.task';
import { AuditVerifierService } from './audit-verifier.service';
import { AuditController } from './audit.controller';
import { AuditService } from './audit.service';

@Module({
  controllers: [AuditController],
  providers: [AuditService, AuditChainService, AuditVerifierService, AuditCheckpointTask],
  exports: [AuditService, AuditChainService, AuditVerifierService],
})
export class AuditModule {}
