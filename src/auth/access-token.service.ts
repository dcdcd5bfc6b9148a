import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { JwtService } from '@nestjs/jwt';
import { randomUUID } from 'node:crypto';
import type { AppConfig } from '../config/config';
import { KeyRing } from '../keys/key-ring.service';
import { KeyRotationService } from '../keys/key-rotation.service';
import { TokenLifetimeRecorder } from '../keys/token-lifetime-recorder';
import type { SessionEntity } from '../sessions/session.entity';

export const ACCESS_TOKEN_TYPE = 'at+jwt'; // RFC 9068

export interface AccessToken {
  token: string;
  expiresIn: number;
}

/** Signs access tokens with the ring's current key, named by `kid`; the JWT strategy verifies them from the same ring. */
@Injectable()
export class AccessTokenService {
  private readonly ttl: number;
  /** Key rotations keep a retiring key verifying as long as the longest lifetime issued (KeyRotationService). */
  private readonly lifetime: TokenLifetimeRecorder;

  constructor(
    private readonly jwt: JwtService,
    private readonly ring: KeyRing,
    rotation: KeyRotationService,
    config: ConfigService<AppConfig, true>,
  ) {
    this.ttl = config.get('ACCESS_TOKEN_TTL', { infer: true });
    this.lifetime = new TokenLifetimeRecorder(() => rotation.recordTokenLifetime());
  }

  /**
   * Never valid beyond the session's absolute deadline (the guard enforces it anyway). Carries
   * `auth_time` (OpenID Connect's claim, in seconds): when the user last authenticated in this
   * session, which step-up checks read (RFC 9470).
   */
  async issue(session: SessionEntity): Promise<AccessToken> {
    // A promise only before the first token (or after a failed record): no await otherwise, on the login and refresh paths.
    const recording = this.lifetime.beforeIssue();
    if (recording) await recording;
    const iat = Math.floor(Date.now() / 1000);
    // exp is set directly: jsonwebtoken's expiresIn counts from the truncated iat, which would
    // end a capped token up to a second earlier than needed.
    const exp = Math.max(iat + 1, Math.min(iat + this.ttl, Math.floor(session.absoluteExpiresAt.getTime() / 1000)));
    const expiresIn = exp - iat;
    const key = this.ring.signingKey();
    const token = await this.jwt.signAsync(
      { sid: session.id, auth_time: Math.floor(session.authTime.getTime() / 1000), iat, exp },
      {
        // jsonwebtoken takes a KeyObject (imported once, when the ring is loaded); its types want a string.
        secret: key.signingKey as unknown as string,
        algorithm: key.algorithm,
        subject: session.userId,
        jwtid: randomUUID(),
        header: { alg: key.algorithm, typ: ACCESS_TOKEN_TYPE, kid: key.kid },
      },
    );
    return { token, expiresIn };
  }
}
