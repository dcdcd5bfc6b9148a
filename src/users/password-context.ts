import { BadRequestException } from '@nestjs/common';

/** Words that make a password guessable for this service whoever the user is (ASVS 6.1.2). */
export const SERVICE_WORDS = ['sessionary'];

/**
 * ASVS 6.2.11: a password must not contain the service's name, the username or the email's
 * local part (compared without case; parts shorter than 4 characters are too common to ban).
 * A rule of the whole account, so it runs in the services, where username and email are known.
 */
export function assertPasswordFreeOfContext(
  password: string,
  account: { username: string; email: string },
  field: 'password' | 'newPassword' = 'password',
): void {
  const lower = password.toLowerCase();
  const words = [...SERVICE_WORDS, account.username, account.email.split('@')[0]].map((w) => w.toLowerCase()).filter((w) => w.length >= 4);
  if (words.some((word) => lower.includes(word))) {
    // Named as the request names it (API.md: a 400 names the field).
    throw new BadRequestException([`${field} must not contain the username, the email name or the service name`]);
  }
}
