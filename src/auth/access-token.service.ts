import { Injectable } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { JwtService } from '@nestjs/jwt';
import { randomUUID } from 'node:crypto';
import type { AppConfig } from '../config/config';
import type { SessionEntity } from '../sessions/session.entity';

export const ACCESS_TOKEN_TYPE = 'at+jwt'; // RFC 9068
export const ACCESS_TOKEN_ALGORITHM = 'HS256';

export interface AccessToken {
  token: string;
  expiresIn: number;
}

/** Signs access tokens; the JWT strategy verifies them with the same key and pinned algorithm. */
@Injectable()
export class AccessTokenService {
  private readonly ttl: number;

  constructor(
    private readonly jwt: JwtService,
    config: ConfigService<AppConfig, true>,
  ) {
    this.ttl = config.get('ACCESS_TOKEN_TTL', { infer: true });
  }

  /**
   * Never valid beyond the session's absolute deadline (the guard enforces it anyway). Carries
   * `auth_time` (OpenID Connect's claim, in seconds): when the user last authenticated in this
   * session, which step-up checks read (RFC 9470).
   */
  async issue(session: SessionEntity): Promise<AccessToken> {
    const iat = Math.floor(Date.now() / 1000);
    // exp is set directly: jsonwebtoken's expiresIn counts from the truncated iat, which would
    // end a capped token up to a second earlier than needed.
    const exp = Math.max(iat + 1, Math.min(iat + this.ttl, Math.floor(session.absoluteExpiresAt.getTime() / 1000)));
    const expiresIn = exp - iat;
    const token = await this.jwt.signAsync(
      { sid: session.id, auth_time: Math.floor(session.authTime.getTime() / 1000), iat, exp },
      { subject: session.userId, jwtid: randomUUID(), header: { alg: ACCESS_TOKEN_ALGORITHM, typ: ACCESS_TOKEN_TYPE } },
    );
    return { token, expiresIn };
  }
}
