import { Module } from '@nestjs/common';
import { AuditModule } from '../audit/audit.module';
import { SessionaryConfigModule } from '../sessionary/sessionary-config';
import { SessionsModule } from '../sessions/sessions.module';
import { JwksController } from './jwks.controller';
import { KeyRing } from './key-ring.service';
import { KeyRotationService } from './key-rotation.service';
import { KeyRotationTask } from './key-rotation.task';

/**
 * The ring of access-token signing keys: stored encrypted in PostgreSQL, rotated without
 * logging anyone out, the public ones published as a JWKS at the root (outside ROUTE_PREFIX,
 * where RFC 8615 puts well-known URIs).
 */
@Module({
  imports: [SessionaryConfigModule, AuditModule, SessionsModule],
  controllers: [JwksController],
  providers: [KeyRing, KeyRotationService, KeyRotationTask],
  exports: [KeyRing, KeyRotationService, KeyRotationTask],
})
export class KeysModule {}
