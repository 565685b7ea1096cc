// What one check says about one request, and how several are combined:
// the most severe action wins; headers of checks that let mail through are
// kept for the reply.

/** Ordered by how much they weigh when checks disagree. */
export const Severity = {
  dunno: 0,
  prepend: 10,
  greylist: 20,
  defer: 30,
  reject: 40,
} as const

export type SeverityName = keyof typeof Severity

export interface Verdict {
  check: string
  severity: SeverityName
  /** The access(5) action for defer/reject; unused for dunno/prepend. */
  action?: string
  /** Header lines (`Name: value`) to add when the mail is let through. */
  headers?: string[]
  reason: string
  /** Extra key=value fields for the decision log line. */
  fields?: Record<string, string | number>
}

/** One action from several verdicts: the most severe defer/reject, else the headers to prepend, else DUNNO. */
export function combineVerdicts(verdicts: Verdict[]): { action: string; winner: Verdict | null } {
  let winner: Verdict | null = null
  for (const v of verdicts) if (!winner || Severity[v.severity] > Severity[winner.severity]) winner = v
  if (!winner) return { action: 'DUNNO', winner }
  if (Severity[winner.severity] >= Severity.greylist) return { action: winner.action ?? 'DUNNO', winner }
  const headers = verdicts.flatMap((v) => v.headers ?? [])
  // Postfix takes one PREPEND per reply: the first header goes now.
  if (headers.length > 0) return { action: `PREPEND ${headers[0]}`, winner }
  return { action: winner.action ?? 'DUNNO', winner }
}
