import { SetMetadata } from '@nestjs/common';

export const IS_PUBLIC_KEY = 'isPublic';
/** Opens a route to unauthenticated callers; every other route needs an active session. */
export const Public = () => SetMetadata(IS_PUBLIC_KEY, true);
