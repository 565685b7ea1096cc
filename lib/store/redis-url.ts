// redis_url, parsed: where the Redis store connects. Small and free of the
// client library, so that the configuration can check the value on the
// spawn path without loading anything heavy.

export interface RedisEndpoint {
  tls: boolean
  /** TCP: host and port. */
  host?: string
  port?: number
  /** unix://: the socket's path. */
  path?: string
  db: number
  username?: string
  /** Only from a URL that carries one; the configuration refuses that (redis_password_file keeps the secret). */
  password?: string
}

const DEFAULT_PORT = 6379
/** Redis's own bound on `databases` is a 32-bit int; more than this is a typo. */
const MAX_DB = 1_000_000

/** redis://[USER[:PASSWORD]@]HOST[:PORT][/DB], rediss://... (TLS), unix:///PATH[?db=DB]. */
export function parseRedisUrl(text: string): RedisEndpoint | { error: string } {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    return { error: 'is not a URL (redis://HOST:PORT/DB, rediss://..., unix:///PATH)' }
  }
  const scheme = url.protocol
  if (scheme !== 'redis:' && scheme !== 'rediss:' && scheme !== 'unix:') return { error: `has scheme ${scheme} (known: redis:, rediss:, unix:)` }
  const user = url.username === '' ? {} : { username: decodeURIComponent(url.username) }
  const secret = url.password === '' ? {} : { password: decodeURIComponent(url.password) }
  if (scheme === 'unix:') {
    if (url.host !== '' || !url.pathname.startsWith('/') || url.pathname === '/') return { error: 'must name an absolute socket path (unix:///run/redis/redis.sock)' }
    const db = dbNumber(url.searchParams.get('db') ?? '0')
    if (db === null) return { error: 'has a db= that is not a database number' }
    return { tls: false, path: decodeURIComponent(url.pathname), db, ...user, ...secret }
  }
  if (url.hostname === '') return { error: 'names no host' }
  if (url.search !== '' || url.hash !== '') return { error: 'has a query or fragment, which policyd-ts does not read' }
  const db = dbNumber(url.pathname === '' || url.pathname === '/' ? '0' : url.pathname.slice(1))
  if (db === null) return { error: `has path ${url.pathname}, which is not /DB (a database number)` }
  return {
    tls: scheme === 'rediss:',
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? DEFAULT_PORT : Number(url.port),
    db,
    ...user,
    ...secret,
  }
}

function dbNumber(text: string): number | null {
  if (!/^\d{1,7}$/.test(text)) return null
  const n = Number(text)
  return n <= MAX_DB ? n : null
}

/** The endpoint as logs and `store check` show it: never the password. */
export function describeEndpoint(e: RedisEndpoint): string {
  const user = e.username ? `${encodeURIComponent(e.username)}@` : ''
  if (e.path !== undefined) return `unix://${user}${e.path}${e.db === 0 ? '' : `?db=${e.db}`}`
  const host = e.host!.includes(':') ? `[${e.host}]` : e.host
  return `${e.tls ? 'rediss' : 'redis'}://${user}${host}:${e.port}/${e.db}`
}

/** For the configuration: why the value cannot be used, or null. */
export function redisUrlProblem(text: string): string | null {
  const parsed = parseRedisUrl(text)
  if ('error' in parsed) return `redis_url: ${JSON.stringify(text)} ${parsed.error}`
  if (parsed.password !== undefined) return 'redis_url: carries a password; put it in redis_password_file instead (the URL appears in logs and in --test-mode)'
  return null
}
