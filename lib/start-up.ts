// How this process started (the bundle with its code cache, or the plain
// modules), set by ./boot and reported by --test-mode. A module of its own
// so that the command-line side does not import boot, which imports it.

export type StartUp = 'modules' | 'bundle' | 'bundle+cache'

export const startUp: { mode: StartUp; why: string } = { mode: 'modules', why: 'not started yet' }
