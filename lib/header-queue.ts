// Postfix takes one PREPEND per reply, and a PREPEND given with any
// recipient goes into the message once. So the headers of a message wait
// here, per `instance`, and go out one per reply that lets mail through:
// the first with this recipient, the next with the next recipient or with
// the DATA check (smtpd_data_restrictions). END-OF-MESSAGE cannot take one.
// A header still waiting when the next message starts is logged as lost,
// if any reply of its message let mail through (else there is no message).

import { BoundedMap } from './bounded-map'

/** States whose replies may not PREPEND (Postfix ignores it there with a warning). */
const NO_PREPEND_STATES = new Set(['END-OF-MESSAGE'])

export class HeaderQueue {
  private readonly waiting: BoundedMap<string, { headers: string[]; letThrough: boolean }>
  private current = ''

  constructor(
    limit: number,
    private readonly log: (level: number, msg: string) => void,
  ) {
    this.waiting = new BoundedMap(limit)
  }

  /** Queue the request's new headers for its message; returns the one header its reply carries, if any. */
  take(req: { instance: string; protocolState: string }, fresh: readonly string[], letThrough: boolean): string | null {
    const canPrepend = letThrough && !NO_PREPEND_STATES.has(req.protocolState)
    if (req.instance === '') {
      // Without a message identity nothing can wait for a later reply.
      const given = canPrepend && fresh.length > 0 ? fresh[0] : null
      if (letThrough) for (const h of fresh) if (h !== given) this.log(1, `header not added (no instance attribute to carry it to a later reply): ${h}`)
      return given
    }
    if (req.instance !== this.current) {
      this.dropLeftovers(this.current)
      this.current = req.instance
    }
    const entry = this.waiting.get(req.instance) ?? { headers: [], letThrough: false }
    entry.headers.push(...fresh)
    entry.letThrough ||= letThrough
    const given = canPrepend ? (entry.headers.shift() ?? null) : null
    this.waiting.set(req.instance, entry)
    return given
  }

  /** Headers waiting for a message, for tests and logs. */
  pending(instance: string): readonly string[] {
    return this.waiting.get(instance)?.headers ?? []
  }

  private dropLeftovers(instance: string): void {
    const left = this.waiting.get(instance)
    this.waiting.delete(instance)
    // No reply let this message through: there is no message to miss a header.
    if (!left || !left.letThrough) return
    for (const h of left.headers) this.log(1, `header not added to message ${instance}: no later request of it could carry it (add check_policy_service to smtpd_data_restrictions): ${h}`)
  }
}
