/**
 * The OpenAPI document's `Cache-Control` of a response that sets it (`@Header` is not read by
 * @nestjs/swagger): tokens and the answer of the moment are never stored by a cache.
 */
export const NO_STORE_HEADERS = {
  'Cache-Control': { description: 'Never stored by caches', schema: { type: 'string', enum: ['no-store'] } },
};
