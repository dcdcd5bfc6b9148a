/** The algorithms a signing key may have: ES256 (its public key is published) and HS256 (a shared secret). */
export const SIGNING_ALGORITHMS = ['ES256', 'HS256'] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];
