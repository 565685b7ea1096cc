// A file the admin may edit while policyd-ts runs (whitelists, Per_User):
// read again when its inode, size or modification time changes.

export interface WatchedState<T> {
  /** null while the file is missing or unreadable. */
  value: T | null
  /** Why the file could not be read. */
  reason: string
}

export class WatchedFile<T> {
  private signature: string | undefined
  private state: WatchedState<T> = { value: null, reason: 'not read yet' }

  constructor(
    readonly path: string,
    private readonly read: (text: string) => T,
  ) {}

  get current(): WatchedState<T> {
    return this.state
  }

  /** Look at the file; returns true when it changed (or was read for the first time). */
  poll(): boolean {
    const fs = require('node:fs') as typeof import('node:fs')
    let signature = 'missing'
    let reason = ''
    try {
      const st = fs.statSync(this.path)
      signature = `${st.ino}:${st.size}:${st.mtimeMs}`
    } catch (err) {
      reason = (err as Error).message
    }
    if (signature === this.signature) return false
    this.signature = signature
    if (signature === 'missing') {
      this.state = { value: null, reason }
      return true
    }
    try {
      this.state = { value: this.read(fs.readFileSync(this.path, 'utf8')), reason: '' }
    } catch (err) {
      this.state = { value: null, reason: (err as Error).message }
    }
    return true
  }
}
