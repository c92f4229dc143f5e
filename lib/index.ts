// The library API a storage node process embeds.
//
//   import { Volume } from 'blockwal';
//   const vol = await Volume.create('/data/vol1', { sizeBytes: 64 << 30 });
//   await vol.write(0, data, { fua: true });
//   const bytes = await vol.read(0, 4096);
//   await vol.close();
export { Volume, REQUEST_BYTES_MAX, type VolumeCreateOptions, type VolumeOptions, type VolumeStatus } from './engine/volume';
export { StorageNode, type StorageNodeOptions, type OpenVolumeOptions, type NodeStatus, type NbdAddress } from './node/storage_node';
export { NbdServer } from './nbd/server';
export type { NbdBackend, NbdExport, Extent } from './nbd/backend';
export { type AllocationExtent } from './engine/allocation';
export { BlockwalError } from './native/errors';
export { Ring, OpKind, OpPurpose, type ArenaSlice, type RingOptions } from './native/ring';
export { Wal, type AppendRecord, type AppendedRecord, type WalOptions, type WalStatus } from './native/wal';
export { scanWal, type ScanResult } from './native/wal_format';
export { BaseImage, BLOCK_BYTES } from './native/base_image';
export { DenseBitmap } from './native/bitmap';
