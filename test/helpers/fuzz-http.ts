import { Agent, IncomingHttpHeaders, request } from 'node:http';
import { AddressInfo, connect } from 'node:net';
import type { Server } from 'node:http';

/**
 * A request exactly as the fuzzer means it: the request target is sent byte for byte (already
 * percent-encoded, or deliberately not), headers as given, the body as raw bytes. supertest
 * would serialise objects, set a Content-Type and drop what it cannot encode; the fuzzer needs
 * to send malformed JSON, wrong content types and undecodable URLs as they are.
 */
export interface FuzzRequest {
  method: string;
  /** The request target, e.g. `/api/v1/sessions/%ED%A0%80?x=1`. */
  path: string;
  headers: Record<string, string>;
  body?: string | Buffer;
}

export interface FuzzResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

const SHOWN_CHARS = 400;

function shorten(value: string): string {
  return value.length <= SHOWN_CHARS ? value : `${value.slice(0, SHOWN_CHARS)}… (${value.length} chars)`;
}

/** One line a request, escaped (NUL, surrogates, control characters visible), long parts cut. */
export function describeRequest(req: FuzzRequest): string {
  const body = req.body === undefined ? '' : Buffer.isBuffer(req.body) ? `bytes:${req.body.toString('hex')}` : req.body;
  return JSON.stringify({
    method: req.method,
    path: shorten(req.path),
    headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, shorten(v)])),
    ...(req.body === undefined ? {} : { body: shorten(body) }),
  });
}

export function describeResponse(res: FuzzResponse): string {
  return `${res.status} ${res.headers['content-type'] ?? ''} ${shorten(res.text)}`;
}

/** Sends FuzzRequests to a listening test server over keep-alive connections. */
export class FuzzClient {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 8 });
  /** Every request sent, for the report. */
  sent = 0;

  constructor(
    readonly port: number,
    private readonly timeoutMs = 15_000,
  ) {}

  static async listen(server: Server): Promise<FuzzClient> {
    if (!server.listening) await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new FuzzClient((server.address() as AddressInfo).port);
  }

  async send(req: FuzzRequest): Promise<FuzzResponse> {
    this.sent++;
    // A HEAD answer has no body, and Node's client takes any byte after its headers for the
    // next response. Node's server answers a request it cannot parse (bad bytes in the URL,
    // headers too large) with a 400/431 that has a body whatever the method, so HEAD goes
    // over a connection of its own and only the status line and headers are read.
    if (req.method === 'HEAD') return this.head(req);
    try {
      return await this.attempt(req);
    } catch (error) {
      // A kept-alive connection the server closed after its last answer (Node's HTTP server
      // does so after a 400 for an unparsable request): the request never reached it, so
      // send it once more on a fresh connection, as Node's documentation advises.
      if ((error as { reusedSocket?: boolean }).reusedSocket) return this.attempt(req, true);
      throw error;
    }
  }

  private attempt(req: FuzzRequest, fresh = false): Promise<FuzzResponse> {
    return new Promise((resolve, reject) => {
      const body = req.body === undefined ? undefined : Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body, 'utf8');
      const headers: Record<string, string> = { ...req.headers };
      if (body && !Object.keys(headers).some((h) => /^(content-length|transfer-encoding)$/i.test(h))) {
        headers['content-length'] = String(body.length);
      }
      const r = request(
        {
          host: '127.0.0.1',
          port: this.port,
          method: req.method,
          path: req.path,
          headers,
          agent: fresh ? false : this.agent,
          setHost: !('host' in headers),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
      );
      r.setTimeout(this.timeoutMs, () => r.destroy(new Error(`no answer within ${this.timeoutMs} ms: ${describeRequest(req)}`)));
      r.on('error', (e: NodeJS.ErrnoException) =>
        reject(
          Object.assign(new Error(`${e.message} for ${describeRequest(req)}`), {
            reusedSocket: !fresh && r.reusedSocket && (e.code === 'ECONNRESET' || e.code === 'EPIPE'),
          }),
        ),
      );
      r.end(body);
    });
  }

  private async head(req: FuzzRequest): Promise<FuzzResponse> {
    const body = req.body === undefined ? Buffer.alloc(0) : Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body, 'utf8');
    const headers: Record<string, string> = { host: `127.0.0.1:${this.port}`, ...req.headers, connection: 'close' };
    if (body.length && !Object.keys(headers).some((h) => /^(content-length|transfer-encoding)$/i.test(h)))
      headers['content-length'] = String(body.length);
    const head = `${req.method} ${req.path} HTTP/1.1\r\n${Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('')}\r\n`;
    const answer = await rawExchange(this.port, Buffer.concat([Buffer.from(head, 'latin1'), body]), this.timeoutMs, { headersOnly: true });
    const [statusLine, ...lines] = answer.slice(0, answer.indexOf('\r\n\r\n')).split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1]);
    if (!status) throw new Error(`no HTTP answer (${JSON.stringify(answer.slice(0, 200))}) for ${describeRequest(req)}`);
    const parsed: IncomingHttpHeaders = {};
    for (const line of lines) {
      const i = line.indexOf(':');
      if (i > 0) parsed[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    return { status, headers: parsed, text: '' };
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * Writes raw bytes to the server on a fresh connection and answers what came back before the
 * server closed it (or `timeoutMs` passed): for requests no HTTP client will produce.
 */
export function rawExchange(port: number, bytes: Buffer | string, timeoutMs = 5_000, options: { headersOnly?: boolean } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    };
    const timer = setTimeout(done, timeoutMs);
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      // One answer is all we wait for: a complete status line and headers, plus the body if any.
      const text = Buffer.concat(chunks).toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: *(\d+)/i.exec(text);
      if (end >= 0 && (options.headersOnly || !length || text.length - end - 4 >= Number(length[1]))) done();
    });
    socket.on('end', done);
    socket.on('error', (e) => (chunks.length ? done() : reject(e)));
  });
}
