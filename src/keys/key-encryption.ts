import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

const FORMAT_VERSION = 1;
const IV_BYTES = 12; // GCM's recommended nonce length (NIST SP 800-38D)
const TAG_BYTES = 16;

/** The stored key does not decrypt: another KEY_ENCRYPTION_KEY, or a changed row. */
export class KeyDecryptionError extends Error {}

/**
 * Seals the signing keys' private parts for storage: AES-256-GCM under a key derived from
 * KEY_ENCRYPTION_KEY with HKDF-SHA-256 (the configured value is a passphrase-like string of
 * any length; HKDF turns it into exactly 256 bits, separated from any other use of it).
 *
 * Stored as `version ‖ iv ‖ tag ‖ ciphertext`. The caller's additional data (the key's kid
 * and algorithm) is authenticated, not stored: a ciphertext copied into another row fails.
 * A fresh random IV per seal: at most a few keys are ever sealed under one key, far below
 * GCM's limit for random nonces.
 */
export class KeyEncryption {
  private readonly key: Buffer;

  constructor(keyEncryptionKey: string) {
    this.key = Buffer.from(hkdfSync('sha256', Buffer.from(keyEncryptionKey, 'utf8'), Buffer.alloc(0), 'sessionary signing keys v1', 32));
  }

  seal(plaintext: Buffer, additionalData: string): Buffer {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(Buffer.from(additionalData, 'utf8'));
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([Buffer.from([FORMAT_VERSION]), iv, cipher.getAuthTag(), ciphertext]);
  }

  open(sealed: Buffer, additionalData: string): Buffer {
    if (sealed.length < 1 + IV_BYTES + TAG_BYTES || sealed[0] !== FORMAT_VERSION) throw new KeyDecryptionError('unknown format');
    const iv = sealed.subarray(1, 1 + IV_BYTES);
    const tag = sealed.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES);
    const decipher = createDecipheriv('aes-256-gcm', this.key, iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.from(additionalData, 'utf8'));
    decipher.setAuthTag(tag);
    try {
      return Buffer.concat([decipher.update(sealed.subarray(1 + IV_BYTES + TAG_BYTES)), decipher.final()]);
    } catch {
      throw new KeyDecryptionError('authentication failed');
    }
  }
}
