// What one check says about one request, and how several are combined:
// the most severe action wins; headers of checks that let mail through are
// kept for the reply.

/** Ordered by how much they weigh when checks disagree. */
export const Severity = {
  dunno: 0,
  prepend: 10,
  /** An access(5) restriction to apply instead (policyd-spf's *_pass_restriction). */
  restriction: 15,
  greylist: 20,
  defer: 30,
  reject: 40,
} as const

export type SeverityName = keyof typeof Severity

export interface Verdict {
  check: string
  severity: SeverityName
  /** The access(5) action for restriction/greylist/defer/reject (and fail_action stand-ins). */
  action?: string
  /** Header lines (`Name: value`) to add when the mail is let through. */
  headers?: string[]
  reason: string
  /** Extra key=value fields for the decision log line. */
  fields?: Record<string, string | number>
  /** What the check holds in the store until the combined verdict is known. */
  effect?: Effect
}

/**
 * A store change a check proposes (e.g. counting a message against a rate
 * limit): taken provisionally in the check's own atomic step, then kept
 * (`commit`) when the combined verdict lets the mail through, or given
 * back (`release`) when any check refuses it, so refused mail costs no
 * counter. Both may fail: decide() logs it and the reply stands.
 */
export interface Effect {
  commit(): Promise<void>
  release(): Promise<void>
}

/** Whether the combined outcome lets the mail go on (DUNNO, a header or a restriction to evaluate). */
export function letsThrough(combined: Combined): boolean {
  return combined.winner === null || Severity[combined.winner.severity] < Severity.greylist
}

export interface Combined {
  winner: Verdict | null
  /** The action of the winner when it stops the mail or names a restriction; null when the mail goes on (DUNNO or a header). */
  action: string | null
  /** Headers of every verdict, in check order, for this message. */
  headers: string[]
}

/** One outcome from several verdicts: the most severe wins; the first of equals. */
export function combineVerdicts(verdicts: readonly Verdict[]): Combined {
  let winner: Verdict | null = null
  for (const v of verdicts) if (!winner || Severity[v.severity] > Severity[winner.severity]) winner = v
  const headers = verdicts.flatMap((v) => v.headers ?? [])
  const action = winner !== null && Severity[winner.severity] >= Severity.restriction ? (winner.action ?? 'DUNNO') : null
  return { winner, action, headers }
}
