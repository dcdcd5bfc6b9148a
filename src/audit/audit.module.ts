import { Module } from '@nestjs/common';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { DomainEventPublisher } from '../events/domain-event-publisher';
import { AuditMonthOrder } from './audit-month-order';
import { AuditBaseSets } from './audit-base-sets';
import { AuditChainService } from './audit-chain.service';
import { AuditExportService } from './audit-export.service';
import { AuditCheckpointTask } from './audit-checkpoint.task';
import { AuditPartitionsService } from './audit-partitions.service';
import { AuditPartitionsTask } from './audit-partitions.task';
import { AuditVerifierService } from './audit-verifier.service';
import { AuditController } from './audit.controller';
import { AuditService } from './audit.service';
import { AuditShipTask } from './audit-ship.task';
import { AuditShipDestinations } from './audit-ship-destinations';
import { BoundedAuditService } from './bounded-audit.service';
import { RefusedRequestsTally } from './refused-requests-tally';

@Module({
  imports: [SessionaryConfigModule],
  controllers: [AuditController],
  providers: [
    AuditService,
    DomainEventPublisher,
    BoundedAuditService,
    AuditChainService,
    AuditBaseSets,
    AuditMonthOrder,
    AuditVerifierService,
    AuditExportService,
    AuditCheckpointTask,
    AuditPartitionsService,
    AuditPartitionsTask,
    AuditShipDestinations,
    AuditShipTask,
    RefusedRequestsTally,
  ],
  exports: [
    AuditService,
    BoundedAuditService,
    AuditChainService,
    AuditCheckpointTask,
    AuditVerifierService,
    AuditExportService,
    AuditPartitionsService,
    AuditPartitionsTask,
    AuditShipTask,
    RefusedRequestsTally,
  ],
})
export class AuditModule {}
