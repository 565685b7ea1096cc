// The yardstick of npm run bench: the least a Node policy server can do.
// Answers DUNNO to every request (empty line) on stdin and exits at EOF.
let tail = ''
process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk: string) => {
  const text = tail + chunk
  const parts = text.split('\n\n')
  tail = parts.pop() ?? ''
  if (parts.length > 0) process.stdout.write('action=DUNNO\n\n'.repeat(parts.length))
})
