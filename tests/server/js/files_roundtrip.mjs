// The JavaScript SDK (@google/genai, node build) against `gemfs serve`: upload a file from a
// path (several chunks) and a Blob, get, list page by page, download a generated File, delete.
// Prints one JSON line of what it saw; tests/server/test_js_sdk.py judges it.
//
// usage: node files_roundtrip.mjs BASE_URL API_KEY UPLOAD_PATH GENERATED_NAME DOWNLOAD_PATH
import { readFileSync } from 'node:fs';
import { GoogleGenAI } from '@google/genai';

const [baseUrl, apiKey, uploadPath, generatedName, downloadPath] = process.argv.slice(2);
const ai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl } });

const fromPath = await ai.files.upload({
  file: uploadPath,
  config: { mimeType: 'text/plain', displayName: 'from-node' },
});
const fromBlob = await ai.files.upload({
  file: new Blob(['blob bytes'], { type: 'text/plain' }),
  config: { mimeType: 'text/plain', displayName: 'from-blob' },
});
const got = await ai.files.get({ name: fromPath.name });

const listed = [];
const pager = await ai.files.list({ config: { pageSize: 2 } });
for await (const f of pager) listed.push(f.name);

await ai.files.download({ file: generatedName, downloadPath });
const downloaded = readFileSync(downloadPath, 'utf8');

await ai.files.delete({ name: fromPath.name });
let afterDelete = 'still there';
try {
  await ai.files.get({ name: fromPath.name });
} catch (e) {
  afterDelete = e.status;
}

console.log(JSON.stringify({ fromPath, fromBlob, got, listed, downloaded, afterDelete }));
