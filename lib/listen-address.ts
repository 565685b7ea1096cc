// The forms of the `listen` and `metrics_listen` keys, parsed once for the
// configuration check and the daemon.

export type ListenAddress =
  | { kind: 'unix'; path: string }
  | { kind: 'inet'; host: string; port: number }
  | { kind: 'systemd' }

/** unix:PATH, inet:HOST:PORT (HOST may be [v6]), or systemd; null when it is none of them. */
export function parseListen(text: string): ListenAddress | null {
  if (text === 'systemd') return { kind: 'systemd' }
  if (text.startsWith('unix:')) {
    const path = text.slice(5)
    return path !== '' && !path.includes('\0') ? { kind: 'unix', path } : null
  }
  if (text.startsWith('inet:')) return parseHostPort(text.slice(5))
  return null
}

/** HOST:PORT or [v6]:PORT, port 1-65535. */
export function parseHostPort(text: string): { kind: 'inet'; host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text)
  if (!m) return null
  const port = Number(m[3])
  if (port < 1 || port > 65535) return null
  return { kind: 'inet', host: m[1] ?? m[2], port }
}

/** Whether a host name or address stays on this machine. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(host) || host === '::1'
}

/** How an address is written in logs and messages. */
export function formatListen(a: ListenAddress): string {
  if (a.kind === 'unix') return `unix:${a.path}`
  if (a.kind === 'systemd') return 'systemd'
  return `inet:${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`
}
