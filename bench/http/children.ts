/** Child processes of the http bench: started with a first IPC message awaited, stopped for sure. */
import { ChildProcess, fork } from 'node:child_process';

/** Forks a helper script and resolves with it and its first message (its port, or `ready`). */
export function forkHelper<T>(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs = 30_000,
): Promise<{ child: ChildProcess; first: T }> {
  const child = fork(script, args, { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${script} did not start within ${timeoutMs} ms`)), timeoutMs);
    child.once('message', (first: T) => {
      clearTimeout(timer);
      resolve({ child, first });
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited before it was ready (${signal ?? code})`));
    });
  });
}

/** Sends a message and waits for the answer (one request at a time per child). */
export function ask<T>(child: ChildProcess, message: object): Promise<T> {
  return new Promise((resolve, reject) => {
    const onExit = () => reject(new Error('the child exited before it answered'));
    child.once('exit', onExit);
    child.once('message', (answer: T) => {
      child.off('exit', onExit);
      resolve(answer);
    });
    child.send(message);
  });
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
export function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
