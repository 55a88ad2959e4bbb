import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** The processes on this machine as /proc shows them, and the process groups the harness runs smtpd in. */

interface LiveProcess {
  pid: number;
  comm: string;
  pgrp: number;
}

/** Live (not zombie) processes named smtpd, any instance on the machine. */
export function smtpdPids(): number[] {
  return liveProcesses()
    .filter((p) => p.comm === 'smtpd')
    .map((p) => p.pid);
}

function liveProcesses(): LiveProcess[] {
  const found: LiveProcess[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // comm is in parentheses and may itself contain spaces or parentheses
    const open = stat.indexOf('(');
    const close = stat.lastIndexOf(')');
    const [state, , pgrp] = stat.slice(close + 2).split(' ');
    if (state === 'Z' || state === 'X') continue;
    found.push({ pid: Number(name), comm: stat.slice(open + 1, close), pgrp: Number(pgrp) });
  }
  return found;
}

function groupAlive(pgid: number): boolean {
  return liveProcesses().some((p) => p.pgrp === pgid);
}

export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // already gone
  }
}

/** Waits until no process of the group is left, killing what remains after 5 s. */
export async function waitGroupGone(pgid: number): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (groupAlive(pgid) && Date.now() < deadline) await sleep(50);
  if (groupAlive(pgid)) signalGroup(pgid, 'SIGKILL');
  while (groupAlive(pgid)) await sleep(50);
}
