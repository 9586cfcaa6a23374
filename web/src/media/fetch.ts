// A media file's bytes, fetched with the caller's credentials (as api.ts's fetchText does for text):
// the 3D viewer parses binary meshes (GLB, STL, PLY) from an ArrayBuffer.

import { ApiError, authHeaders } from "../api";

export async function fetchBytes(url: string, signal?: AbortSignal): Promise<ArrayBuffer> {
  const response = await fetch(url, { headers: authHeaders(), signal });
  if (!response.ok) throw new ApiError(response.status, `${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}
