// A loopback server that speaks just enough RESP for a test to decide each
// reply itself: what a real redis-server cannot be made to say (an INFO
// without some field, a Sentinel naming an impossible port) or to show (the
// commands a client sends as it connects). Closed at teardown.
import net from 'node:net'

export interface FakeRedis {
  port: number
  /** Every command received, in order, as its words (the name in lower case). */
  commands: string[][]
}

/** RESP text of a bulk string. */
export const bulk = (s: string): string => `$${Buffer.byteLength(s)}\r\n${s}\r\n`

/**
 * Answers each command with `reply(words)`, sent as is (RESP text);
 * `null` closes the connection instead.
 */
export async function startFakeRedis(t: Tap.Test, reply: (words: string[]) => string | null): Promise<FakeRedis> {
  const commands: string[][] = []
  const sockets = new Set<net.Socket>()
  const srv = net.createServer((sock) => {
    sockets.add(sock)
    sock.on('close', () => sockets.delete(sock))
    sock.on('error', () => undefined)
    let buf = Buffer.alloc(0)
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      for (let cmd = takeCommand(buf); cmd; cmd = takeCommand(buf)) {
        buf = buf.subarray(cmd.length)
        commands.push(cmd.words)
        const answer = reply(cmd.words)
        if (answer === null) {
          sock.destroy()
          return
        }
        sock.write(answer)
      }
    })
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const sock of sockets) sock.destroy()
    srv.close()
  })
  return { port: (srv.address() as net.AddressInfo).port, commands }
}

/** The first whole command (an array of bulk strings) in `buf`: its words (the first in lower case) and its length in bytes. */
export function takeCommand(buf: Buffer): { words: string[]; length: number } | null {
  const text = buf.toString('latin1')
  let at = text.indexOf('\r\n')
  if (at < 0 || text[0] !== '*') return null
  const count = Number(text.slice(1, at))
  at += 2
  const words: string[] = []
  for (let i = 0; i < count; i++) {
    const eol = text.indexOf('\r\n', at)
    if (eol < 0) return null
    const size = Number(text.slice(at + 1, eol))
    if (text.length < eol + 2 + size + 2) return null
    const word = text.slice(eol + 2, eol + 2 + size)
    words.push(i === 0 ? word.toLowerCase() : word)
    at = eol + 2 + size + 2
  }
  return { words, length: at }
}
