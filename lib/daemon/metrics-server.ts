// GET /metrics on metrics_listen: the daemon's counters in the Prometheus
// text format 0.0.4. Anything else is 404; the server never blocks the
// policy connections (rendering is a few hundred lines at most).

import type { Metrics } from '../metrics'
import { parseHostPort, isLoopback } from '../listen-address'

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

export interface MetricsServer {
  address: string
  close(): Promise<void>
}

export async function startMetricsServer(where: string, metrics: Metrics, log: (level: number, msg: string) => void): Promise<MetricsServer> {
  const hp = parseHostPort(where)
  if (!hp) throw new Error(`metrics_listen: ${JSON.stringify(where)} is not HOST:PORT`)
  const http = require('node:http') as typeof import('node:http')
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end()
      return
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: try /metrics\n')
      return
    }
    const body = metrics.render()
    res.writeHead(200, { 'Content-Type': CONTENT_TYPE, 'Content-Length': Buffer.byteLength(body) })
    res.end(req.method === 'HEAD' ? undefined : body)
  })
  // A scraper that connects and says nothing must not hold a socket forever.
  server.headersTimeout = 5000
  server.requestTimeout = 10000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(hp.port, hp.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  server.on('error', (err) => log(0, `metrics server error: ${err.message}`))
  if (!isLoopback(hp.host)) log(0, `warning: metrics served on ${where}, not loopback: restrict it with a firewall`)
  const addr = server.address() as import('node:net').AddressInfo
  return {
    address: `${addr.address}:${addr.port}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    }),
  }
}
