// What the ops commands match stored greylist keys against: a triplet key
// is "<client network or spf:domain>/<sender>/<recipient>" (lib/greylist/
// check.ts), and patterns are shell-style (* any run, ? one character).

export interface TripletParts {
  subject: string
  sender: string
  recipient: string
}

export interface TripletFilter {
  client?: string
  sender?: string
  recipient?: string
}

/** A network ends in /bits; an SPF-authenticated domain is spf:name. Null for a key of another form (a privacy hash). */
export function splitTripletKey(key: string): TripletParts | null {
  const m = /^(spf:[^/]*|[0-9a-fA-F.:]+\/\d{1,3})\/([^/]*)\/(.*)$/.exec(key)
  return m ? { subject: m[1], sender: m[2], recipient: m[3] } : null
}

/** `*` any run, `?` one character, everything else literal; case-insensitive, as addresses are stored lower-case. */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${body}$`, 'i')
}

/** A predicate over stored triplet keys; a key that cannot be split matches only an empty filter. */
export function tripletMatcher(filter: TripletFilter): (key: string) => boolean {
  const tests: Array<[keyof TripletParts, RegExp]> = []
  if (filter.client !== undefined) tests.push(['subject', globToRegExp(filter.client)])
  if (filter.sender !== undefined) tests.push(['sender', globToRegExp(filter.sender)])
  if (filter.recipient !== undefined) tests.push(['recipient', globToRegExp(filter.recipient)])
  if (tests.length === 0) return () => true
  return (key) => {
    const parts = splitTripletKey(key)
    return parts !== null && tests.every(([part, re]) => re.test(parts[part]))
  }
}
