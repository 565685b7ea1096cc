// Renders the KEYS section of man/policyd-ts.conf.5 from the option table,
// so that the page and lib/config.ts cannot drift apart (npm run man
// rewrites it; test/man.test.ts fails when it is stale).

import { CONFIG_KEYS, OPTIONS } from './config'

export const KEYS_BEGIN = '.\\" BEGIN KEYS: generated from lib/config.ts by npm run man; edit the table, not this'
export const KEYS_END = '.\\" END KEYS'

/** Escape text for a groff line: backslashes, hyphens, and a leading dot or quote. */
export function groffText(text: string): string {
  const escaped = text.replace(/\\/g, '\\e').replace(/-/g, '\\-')
  return /^[.']/.test(escaped) ? `\\&${escaped}` : escaped
}

export function renderKeys(): string {
  const out: string[] = [KEYS_BEGIN]
  for (const key of CONFIG_KEYS) {
    const spec = OPTIONS[key]
    const shown = spec.default === '' ? '(empty)' : spec.default
    out.push('.TP', `.B ${groffText(key)}`, `Default: \\fI${groffText(shown)}\\fR.`, `Type: ${spec.type}${spec.values ? ` (${spec.values.map(groffText).join(', ')})` : ''}${spec.min !== undefined ? `, at least ${spec.min}` : ''}${spec.max !== undefined ? `, at most ${spec.max}` : ''}.`, groffText(spec.doc))
  }
  out.push(KEYS_END)
  return out.join('\n')
}

/** Replace the generated section of a page's text. */
export function withKeys(page: string): string {
  const begin = page.indexOf(KEYS_BEGIN)
  const end = page.indexOf(KEYS_END)
  if (begin === -1 || end === -1) throw new Error('man page lacks the KEYS markers')
  return page.slice(0, begin) + renderKeys() + page.slice(end + KEYS_END.length)
}
