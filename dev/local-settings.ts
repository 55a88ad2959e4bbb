import { readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

/**
 * The local ports, from firebase.json's emulators section, so they are set in
 * one place: the functions (npm start) and the Datastore emulator it starts.
 */
const Address = z.object({ host: z.string(), port: z.number().int() });
const Settings = z.object({ emulators: z.object({ functions: Address, firestore: Address }) });

export function localSettings(): z.infer<typeof Settings>['emulators'] {
  const file = path.join(__dirname, '../../firebase.json');
  return Settings.parse(JSON.parse(readFileSync(file, 'utf8'))).emulators;
}
