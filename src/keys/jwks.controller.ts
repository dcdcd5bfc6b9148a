import { Controller, Get, Header, Res, UseFilters } from '@nestjs/common';
import { SessionaryRoutesFilter } from '../common/sessionary-routes.filter';
import { ConfigService } from '@nestjs/config';
import { ApiOkResponse, ApiOperation, ApiProduces, ApiProperty, ApiTags } from '@nestjs/swagger';
import { SkipThrottle } from '@nestjs/throttler';
import type { FastifyReply } from 'fastify';
import { Public } from '../common/public.decorator';
import type { AppConfig } from '../config/config';
import { jwksMaxAge } from './jwks-max-age';
import { KeyRing } from './key-ring.service';
import type { PublishedJwk } from './signing-key';

export class JwkDto implements PublishedJwk {
  @ApiProperty({ enum: ['EC'] }) kty: string;
  @ApiProperty({ enum: ['P-256'] }) crv: string;
  @ApiProperty({ description: 'base64url', pattern: '^[A-Za-z0-9_-]+$', maxLength: 64 }) x: string;
  @ApiProperty({ description: 'base64url', pattern: '^[A-Za-z0-9_-]+$', maxLength: 64 }) y: string;
  @ApiProperty({ description: "The key's id, as in a token's `kid` header (its RFC 7638 thumbprint)", maxLength: 64 }) kid: string;
  @ApiProperty({ enum: ['ES256'] }) alg: string;
  @ApiProperty({ enum: ['sig'] }) use: 'sig';
}

export class JwksResponseDto {
  @ApiProperty({
    type: [JwkDto],
    maxItems: 100,
    description:
      'The next, current and retiring public keys; empty when the service signs with HS256. Usually two or three: a key retires one token lifetime after the rotation that replaced it',
  })
  keys: JwkDto[];
}

/**
 * The public signing keys as a JWK Set (RFC 7517), for services that verify our access tokens
 * offline. Answered from memory (no query), so it is exempt from the per-client limits like
 * the health probes. The max-age is well below the rotation overlap (ACCESS_TOKEN_TTL): a
 * next key signs only once it has been published longer than twice that (a shared cache may
 * serve a copy that old; nextKeyPublicationSeconds), and a verifier that meets an unknown kid
 * fetches the set again anyway.
 */
@ApiTags('keys')
@Public()
@SkipThrottle()
// Its routes answer as API.md says whatever global filters a host adds (SessionaryRoutesFilter).
@UseFilters(SessionaryRoutesFilter)
@Controller('.well-known')
export class JwksController {
  private readonly cacheControl: string;

  constructor(
    private readonly ring: KeyRing,
    config: ConfigService<AppConfig, true>,
  ) {
    this.cacheControl = `public, max-age=${jwksMaxAge(config.get('ACCESS_TOKEN_TTL', { infer: true }))}`;
  }

  @Get('jwks.json')
  @Header('Content-Type', 'application/jwk-set+json')
  @ApiOperation({ operationId: 'getJwks', summary: 'The public keys that verify access tokens (JWK Set, RFC 7517)' })
  @ApiProduces('application/jwk-set+json')
  @ApiOkResponse({
    type: JwksResponseDto,
    description: 'The JWK Set; fetch it again when a token names an unknown kid',
    headers: {
      'Cache-Control': {
        description: 'public, max-age of a fraction of ACCESS_TOKEN_TTL: a next key is published well before it signs',
        schema: { type: 'string', pattern: '^public, max-age=\\d+$', maxLength: 32 },
      },
    },
  })
  jwks(@Res({ passthrough: true }) reply: FastifyReply): JwksResponseDto {
    reply.header('Cache-Control', this.cacheControl);
    return { keys: this.ring.publicJwks() };
  }
}
