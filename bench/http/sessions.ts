/**
 * The users and sessions of the http bench: readers (whoami, /users/me), one refresh chain per
 * connection, and a dedicated login user whose logins end only its own oldest sessions.
 * Made through the API, as a client would, at most four at a time (bcrypt).
 */
import { BenchUser, login, mapLimit, registerUser, Tokens } from './api';
import type { RefreshChain } from './load';

export interface Chain extends RefreshChain {
  user: BenchUser;
}

export interface BenchSessions {
  readerTokens: Tokens[];
  chains: Chain[];
  loginUser: BenchUser;
  /** Between runs: a chain without a usable token ends its session and opens a new one. */
  repairChains(): Promise<number>;
}

export async function setUpSessions(
  base: string,
  options: { readerSessions: number; chains: number; sessionsPerUser: number },
): Promise<BenchSessions> {
  // SESSION_MAX_PER_USER ends the oldest session beyond the limit: spread sessions over users.
  const usersFor = (sessions: number) => Math.max(1, Math.ceil(sessions / options.sessionsPerUser));
  const ownerOf = (owners: BenchUser[], i: number) => owners[Math.floor(i / options.sessionsPerUser)];
  const register = (count: number, role: string) =>
    mapLimit(
      Array.from({ length: count }, () => role),
      4,
      (r) => registerUser(base, r),
    );
  const readers = await register(usersFor(options.readerSessions), 'reader');
  const refreshers = await register(usersFor(options.chains), 'refresh');
  const [loginUser] = await register(1, 'login');
  const readerTokens = await mapLimit(
    Array.from({ length: options.readerSessions }, (_, i) => ownerOf(readers, i)),
    4,
    (user) => login(base, user),
  );
  const chains: Chain[] = await mapLimit(
    Array.from({ length: options.chains }, (_, i) => ownerOf(refreshers, i)),
    4,
    async (user) => {
      const { accessToken, refreshToken } = await login(base, user);
      return { user, accessToken, refreshToken, inFlight: false, broken: false };
    },
  );
  // Its first success makes this client known to the failed-login throttle, as for a real user.
  await login(base, loginUser);

  const repairChains = async () => {
    let repaired = 0;
    for (const chain of chains.filter((c) => c.broken || c.inFlight)) {
      await fetch(`${base}/api/v1/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${chain.accessToken}` } });
      const { accessToken, refreshToken } = await login(base, chain.user);
      Object.assign(chain, { accessToken, refreshToken, inFlight: false, broken: false });
      repaired++;
    }
    return repaired;
  };
  return { readerTokens, chains, loginUser, repairChains };
}
