/** `medtune eval ARGS` run in this process: its stdout as one string (stderr silenced). */
import yargs from 'yargs';
import { vi } from 'vitest';
import { evalCommand } from '../../src/commands/eval.js';

export async function runEval(args: string[]): Promise<string> {
  const out: string[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (out.push(String(chunk)), true));
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    await yargs().command(evalCommand).strict().fail((msg, e) => { throw e ?? new Error(msg); }).parseAsync(['eval', ...args]);
  } finally {
    spy.mockRestore();
    err.mockRestore();
  }
  return out.join('');
}
