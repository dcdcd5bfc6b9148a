import { Column, Entity, PrimaryColumn } from 'typeorm';

/**
 * Hashes of refresh tokens that were already exchanged. Presenting one again is reuse
 * (a stolen token, or a client racing itself) and ends the session. Rows go with their
 * session (ON DELETE CASCADE) when cleanup deletes it.
 */
@Entity({ name: 'rotated_refresh_tokens' })
export class RotatedRefreshTokenEntity {
  @PrimaryColumn({ name: 'token_hash', type: 'char', length: 64 })
  tokenHash: string;

  @Column({ name: 'session_id', type: 'uuid' })
  sessionId: string;

  @Column({ name: 'rotated_at', type: 'timestamptz', default: () => 'now()' })
  rotatedAt: Date;
}
