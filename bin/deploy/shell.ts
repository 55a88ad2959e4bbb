import type { Command, Step } from './plan';

/** One shell word: as is when that is safe, else in single quotes. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A command as the operator would type it; a fresh token on stdin is made by openssl, as the deploy makes it with node:crypto. */
export function commandLine(command: Command): string {
  const line = command.argv.map(shellQuote).join(' ');
  return command.stdin === 'random-token' ? `openssl rand -hex 32 | tr -d '\\n' | ${line}` : line;
}

/** The steps as a script to read top to bottom: each create after the describe that skips it (`# if missing:`). */
export function printedPlan(steps: readonly Step[]): string {
  const out: string[] = [];
  let phase: Step['phase'] | undefined;
  for (const step of steps) {
    if (step.phase !== phase) {
      phase = step.phase;
      out.push(phase === 'setup' ? '# --- set up the project (each create is skipped when its describe finds it) ---' : '# --- deploy ---', '');
    }
    out.push(`# ${step.why}`);
    if (step.describe) out.push(commandLine(step.describe), '# if missing:');
    out.push(commandLine(step.create), '');
  }
  return out.join('\n');
}
