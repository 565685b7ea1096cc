// An INI file as Python's configparser reads it by default, for
// postfixlimit's /etc/postfixlimit.conf: `[section]` headers, `key = value`
// or `key: value` (the first of = and : separates), keys in lower case,
// `#` and `;` comment lines, indented lines continuing a value, and a
// section or key given twice refused (configparser's strict mode).

export interface IniValue {
  value: string
  line: number
}

export type Ini = Map<string, Map<string, IniValue>>

export function parseIni(text: string): { ini: Ini } | { error: string } {
  const ini: Ini = new Map()
  let section: Map<string, IniValue> | null = null
  let last: IniValue | null = null
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]
    const trimmed = raw.trim()
    const at = `line ${i + 1}`
    if (trimmed === '' || trimmed.startsWith('#') || trimmed.startsWith(';')) {
      // A blank line ends a value; a comment line does not break it.
      if (trimmed === '') last = null
      continue
    }
    if (/^\s/.test(raw) && last !== null) {
      last.value = `${last.value}\n${trimmed}`
      continue
    }
    const header = /^\[([^\]]+)\]/.exec(trimmed)
    if (header) {
      if (ini.has(header[1])) return { error: `${at}: section [${header[1]}] appears twice` }
      ini.set(header[1], (section = new Map()))
      last = null
      continue
    }
    if (section === null) return { error: `${at}: a setting before any [section] header: ${JSON.stringify(trimmed)}` }
    const sep = trimmed.search(/[=:]/)
    if (sep <= 0) return { error: `${at}: not a "key = value" line: ${JSON.stringify(trimmed)}` }
    const key = trimmed.slice(0, sep).trim().toLowerCase()
    if (section.has(key)) return { error: `${at}: ${key} is set twice in one section` }
    section.set(key, (last = { value: trimmed.slice(sep + 1).trim(), line: i + 1 }))
  }
  return { ini }
}
