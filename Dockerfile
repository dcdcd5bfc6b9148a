# syntax=docker/dockerfile:1
# Build stage: dev dependencies and the TypeScript compiler stay here.
FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# Runtime stage: compiled code, production dependencies, the password list; no compiler.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
# tini as PID 1 (0.23.0): the kernel gives PID 1 only the signals it has a handler for, so Node
# there ignored a SIGTERM during boot and migrations (until Docker's SIGKILL), and the signal Nest
# raises again after its graceful shutdown (the process then ended with 0, or hung).
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY data ./data
# The embedded PostgreSQL (used only without DATABASE_URL) keeps its data here.
RUN mkdir -p /app/.data && chown node:node /app/.data
VOLUME ["/app/.data"]
USER node
EXPOSE 3000
# Liveness, not readiness: an orchestrator that replaces unhealthy containers would otherwise
# replace every instance at once while the database is down (readiness is the load balancer's).
# The address the service listens on, or loopback when it listens on all of them; HOST and
# PORT from the environment, or from a .env in /app as the service reads it (the environment
# wins; test/dockerfile-healthcheck.spec.ts runs this command).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD node -e "try{process.loadEnvFile('.env')}catch{};const h=process.env.HOST;const a=!h||h==='0.0.0.0'||h==='::'?'127.0.0.1':h.includes(':')?'['+h+']':h;fetch('http://'+a+':'+(process.env.PORT||3000)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# tini passes SIGTERM on to Node (no npm in between), whose graceful shutdown runs; a command
# given to `docker run` (node dist/src/cli.js …) runs under tini too.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/src/main.js"]
