import { spawnSync } from 'node:child_process';

/** The throwaway system user that local mail is delivered as. */

const TEST_USER = 'qharness';

export interface SystemUser {
  name: string;
  uid: number;
  gid: number;
}

let cachedUser: SystemUser | undefined;

/** The test user; created with useradd the first time. */
export function testUser(): SystemUser {
  if (cachedUser) return cachedUser;
  let entry = getent(TEST_USER);
  if (!entry) {
    const added = spawnSync(
      'useradd',
      ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--comment', 'smtpd test harness', TEST_USER],
      { encoding: 'utf8' },
    );
    if (added.error || added.status !== 0) {
      throw new Error(`cannot create the test user ${TEST_USER} with useradd (are we root?): ${added.error?.message ?? added.stderr}`);
    }
    entry = getent(TEST_USER);
    if (!entry) throw new Error(`useradd created ${TEST_USER} but getent does not find it`);
  }
  cachedUser = entry;
  return entry;
}

function getent(name: string): SystemUser | undefined {
  const result = spawnSync('getent', ['passwd', name], { encoding: 'utf8' });
  if (result.status !== 0) return undefined;
  const fields = result.stdout.trim().split(':');
  return { name, uid: Number(fields[2]), gid: Number(fields[3]) };
}
