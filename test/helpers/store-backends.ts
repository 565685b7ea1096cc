// Every store backend the conformance tables run against: SQLite in a temp
// dir, and Redis on one private redis-server per table (each case its own
// key prefix, so a fresh store; a test clock at 0 instead of the server's
// TIME, so that the times a case gives are taken as given). A backend that
// cannot run here (no redis-server) opens as null and the table says why.
import path from 'node:path'
import { SqliteStore } from '../../lib/store/sqlite'
import { RedisStore } from '../../lib/store/redis'
import { parseRedisUrl, type RedisEndpoint } from '../../lib/store/redis-url'
import { startRedisServer } from './redis-server'

export interface StoreBackend {
  name: string
  open(t: Tap.Test): Promise<((dir: string) => SqliteStore | RedisStore) | null>
}

export const sqliteStorePath = (dir: string): string => path.join(dir, 'db', 'store.sqlite')

export const STORE_BACKENDS: StoreBackend[] = [
  {
    name: 'sqlite',
    open: async () => (dir) => new SqliteStore({ path: sqliteStorePath(dir), busyTimeoutMs: 500, renameCorrupt: false, log: () => undefined }),
  },
  {
    name: 'redis',
    open: async (t) => {
      const server = await startRedisServer(t)
      if (!server) return null
      const endpoint = parseRedisUrl(server.url) as RedisEndpoint
      let cases = 0
      return () => new RedisStore({ endpoint, prefix: `case${++cases}:`, timeoutMs: 2000, privacy: false, log: () => undefined, clock: () => 0 })
    },
  },
]
