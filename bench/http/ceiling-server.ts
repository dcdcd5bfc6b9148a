/**
 * A ceiling of `npm run bench -- http`, forked in its own process so that it shares the event
 * loop with neither the load generator nor the service. `bare` answers a small JSON body;
 * `jwt HS256` and `jwt ES256` first verify the bearer token as the service's JWT strategy
 * does on a token it has not seen (the key a KeyObject; algorithm, type, issuer and audience
 * pinned) and answer its claims: every request pays the signature, as nothing is remembered.
 * `jwt ES256 remember` verifies each token once, as the service's strategy does (it remembers
 * the tokens it verified until they expire), and answers a token it verified from memory after
 * checking its expiry: the like-for-like ceiling of a service that remembers, where the other
 * one bounds a bare server that does not (until 0.24.2 only that one was measured, and the
 * service, verifying no signature at all in the timed rounds, read twice its ES256 "ceiling").
 * Tells its parent the port over IPC and ends when the parent goes away.
 */
import { createPublicKey, createSecretKey, KeyObject } from 'node:crypto';
import { createServer, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as jwt from 'jsonwebtoken';

const mode = process.argv[2];
const okBody = JSON.stringify({ status: 'ok' });
const unauthorized = JSON.stringify({ statusCode: 401, error: 'Unauthorized', message: 'Unauthorized' });

function send(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** As many tokens as the service's strategy remembers by default (SESSION_CACHE_MAX). */
const REMEMBERED_MAX = 100_000;

function jwtHandler(algorithm: 'HS256' | 'ES256', remember: boolean): (req: IncomingMessage, res: ServerResponse) => void {
  const remembered = new Map<string, { body: string; expiresAtMs: number }>();
  const key: KeyObject =
    algorithm === 'HS256'
      ? createSecretKey(Buffer.from(process.env.BENCH_JWT_SECRET ?? '', 'utf8'))
      : createPublicKey(process.env.BENCH_JWT_PUBLIC_KEY ?? '');
  const options: jwt.VerifyOptions & { complete: true } = {
    algorithms: [algorithm],
    issuer: process.env.BENCH_JWT_ISSUER,
    audience: process.env.BENCH_JWT_AUDIENCE,
    complete: true,
  };
  return (req, res) => {
    const match = /^Bearer ([^\s]+)$/.exec(req.headers.authorization ?? '');
    try {
      if (!match) throw new Error('no bearer');
      const known = remember ? remembered.get(match[1]) : undefined;
      if (known && known.expiresAtMs > Date.now()) return send(res, 200, known.body);
      const { header, payload } = jwt.verify(match[1], key, options);
      if (header.typ !== 'at+jwt' || typeof payload === 'string') throw new Error('wrong type');
      const body = JSON.stringify({ userId: payload.sub, sessionId: payload.sid });
      if (remember) {
        if (remembered.size >= REMEMBERED_MAX) remembered.clear();
        remembered.set(match[1], { body, expiresAtMs: (payload.exp ?? 0) * 1000 });
      }
      send(res, 200, body);
    } catch {
      send(res, 401, unauthorized);
    }
  };
}

const algorithm = process.argv[3] === 'ES256' ? 'ES256' : 'HS256';
const handler =
  mode === 'jwt' ? jwtHandler(algorithm, process.argv[4] === 'remember') : (_req: IncomingMessage, res: ServerResponse) => send(res, 200, okBody);
const server = createServer(handler);
server.listen(0, '127.0.0.1', () => process.send?.({ port: (server.address() as AddressInfo).port }));
process.on('disconnect', () => process.exit(0));
