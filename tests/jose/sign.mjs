// Signs a request as an operator's tool would, with panva/jose (an implementation of JOSE that is
// not fieldagent's): prints the JWS in compact serialization.
//
//   node sign.mjs KEY.pem KID 'PAYLOAD-JSON'      (KEY.pem: an Ed25519 private key, PKCS#8)
import { readFileSync } from 'node:fs';
import { CompactSign, importPKCS8 } from 'jose';

const [keyFile, kid, payload] = process.argv.slice(2);
const key = await importPKCS8(readFileSync(keyFile, 'utf8'), 'EdDSA');
const jws = await new CompactSign(new TextEncoder().encode(payload))
  .setProtectedHeader({ alg: 'EdDSA', kid })
  .sign(key);
process.stdout.write(jws);
