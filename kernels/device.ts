/**
 * The GPU device, tensors and dispatch.
 *
 * One `Gpu` wraps a WebGPU adapter and device. Kernels are launched through `Gpu.dispatch`, which
 * records into one command encoder until `flush` submits it, so many kernels (many training or
 * decode steps) share one submission. Each dispatch gets its small uniform block from an arena that
 * is written once per submission, so dispatches in one submission can carry different parameters.
 *
 * Readback (`read`, `sync`) waits for the GPU. In Deno on Mesa's software drivers it costs about
 * `READBACK_LATENCY_MS` whatever the amount of work, so callers batch work between readbacks.
 */

/** Measured cost of one `mapAsync` or `onSubmittedWorkDone` round trip in Deno 2.9 on lavapipe. */
export const READBACK_LATENCY_MS = 12;

/** Element types of a tensor. `bf16` and `f16` are stored packed, two values per u32. */
export type DType = "f32" | "bf16" | "f16" | "u32" | "i32";

/** A GPU buffer with a shape, an element type and a label used in error messages. */
export interface Tensor {
  buffer: GPUBuffer;
  shape: number[];
  dtype: DType;
  label: string;
}

/** Options for `Gpu.create`. */
export interface GpuOptions {
  /** Print the adapter's name, backend and relevant limits to stderr. */
  log?: boolean;
  powerPreference?: GPUPowerPreference;
}

/** Adapter facts that kernels use to choose tile sizes, and that logs and benchmarks print. */
export interface GpuInfo {
  description: string;
  vendor: string;
  architecture: string;
  isFallbackAdapter: boolean;
  /** True for CPU implementations such as Mesa's lavapipe and llvmpipe. */
  isSoftware: boolean;
  subgroups: boolean;
  shaderF16: boolean;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupsPerDimension: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupStorageSize: number;
}

/** Bytes of uniform data each dispatch may use; WGSL params structs must fit in it. */
export const PARAMS_BYTES = 256;

const ARENA_CHUNK_DISPATCHES = 256;

/** Dispatches timed by one profiling session; later ones are recorded untimed. */
const PROFILE_CAPACITY = 4096;

const INSTALL_HINT = "On Debian or Ubuntu without a GPU, install Mesa's software Vulkan driver: " +
  "`sudo apt-get install mesa-vulkan-drivers`. With a GPU, install its Vulkan driver.";

/** Count of elements in a shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Returns the byte size of a tensor of `shape` and `dtype`, rounded up to 4 bytes. */
export function byteSize(shape: readonly number[], dtype: DType): number {
  const n = numel(shape);
  const bytes = dtype === "bf16" || dtype === "f16" ? 2 * n : 4 * n;
  return Math.max(4, Math.ceil(bytes / 4) * 4);
}

/** Formats a shape as `[a, b, c]` for error messages. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Error thrown for invalid kernel arguments; the message names the kernel and the sizes. */
export class KernelError extends Error {
  constructor(kernel: string, message: string) {
    super(`${kernel}: ${message}`);
    this.name = "KernelError";
  }
}

/** Throws a KernelError unless `t` has exactly `shape` (and `dtype`, when given). */
export function expectShape(
  kernel: string,
  t: Tensor,
  shape: readonly number[],
  dtypes?: readonly DType[],
): void {
  const ok = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
  if (!ok) {
    throw new KernelError(
      kernel,
      `tensor '${t.label}' has shape ${fmtShape(t.shape)}, expected ${fmtShape(shape)}`,
    );
  }
  if (dtypes && !dtypes.includes(t.dtype)) {
    throw new KernelError(
      kernel,
      `tensor '${t.label}' has dtype ${t.dtype}, expected ${dtypes.join(" or ")}`,
    );
  }
}

interface PendingCheck {
  kernel: string;
  promise: Promise<GPUError | null>;
}

/** Binding of a storage buffer to a dispatch: a whole tensor, or a byte range of one. */
export type Binding = Tensor | { tensor: Tensor; offset: number; size: number };

/** A WebGPU device with a pipeline cache, a uniform arena and a pending command encoder. */
export class Gpu {
  readonly adapter: GPUAdapter;
  readonly device: GPUDevice;
  readonly info: GpuInfo;

  #pipelines = new Map<string, GPUComputePipeline>();
  #pending: PendingCheck[] = [];
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #batchKernels = new Set<string>();
  #arenaChunks: { buffer: GPUBuffer; data: ArrayBuffer }[] = [];
  #arenaChunk = 0;
  #arenaSlot = 0;
  #lost: string | null = null;
  #profile:
    | { set: GPUQuerySet; resolve: GPUBuffer; kernels: string[]; totals: Map<string, number> }
    | null = null;
  #uncaptured: string[] = [];
  #dispatchCount = 0;

  private constructor(adapter: GPUAdapter, device: GPUDevice, info: GpuInfo) {
    this.adapter = adapter;
    this.device = device;
    this.info = info;
    device.lost.then((e) => {
      this.#lost = `GPU device lost (${e.reason}): ${e.message}`;
    });
    device.addEventListener("uncapturederror", (e) => {
      const message = (e as GPUUncapturedErrorEvent).error.message;
      if (this.#uncaptured.length < 8) this.#uncaptured.push(message);
    });
  }

  /**
   * Requests an adapter and a device with the largest buffer limits the adapter offers.
   * Throws with installation advice when WebGPU or an adapter is missing.
   */
  static async create(options: GpuOptions = {}): Promise<Gpu> {
    // Mesa's Vulkan driver prints an error when XDG_RUNTIME_DIR is unset; give it a private folder.
    if (!Deno.env.get("XDG_RUNTIME_DIR")) {
      Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync({ prefix: "llama-adapter-xdg-" }));
    }
    if (typeof navigator === "undefined" || !navigator.gpu) {
      throw new Error(`WebGPU is not available in this Deno build. ${INSTALL_HINT}`);
    }
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: options.powerPreference ?? "high-performance",
    });
    if (!adapter) {
      throw new Error(`No WebGPU adapter was found. ${INSTALL_HINT}`);
    }
    const limits = adapter.limits;
    const features: GPUFeatureName[] = [];
    if (adapter.features.has("shader-f16")) features.push("shader-f16");
    if (adapter.features.has("timestamp-query")) features.push("timestamp-query");
    if (adapter.features.has("subgroups" as GPUFeatureName)) {
      features.push("subgroups" as GPUFeatureName);
    }
    const device = await adapter.requestDevice({
      requiredFeatures: features,
      requiredLimits: {
        maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
        maxBufferSize: limits.maxBufferSize,
        maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
        maxComputeWorkgroupSizeY: limits.maxComputeWorkgroupSizeY,
      },
    });
    const ai = adapter.info;
    const description = ai.description || ai.device || "unknown adapter";
    const info: GpuInfo = {
      description,
      vendor: ai.vendor,
      architecture: ai.architecture,
      isFallbackAdapter: ai.isFallbackAdapter ?? false,
      isSoftware: (ai.isFallbackAdapter ?? false) || /llvmpipe|lavapipe|swiftshader|software/i
        .test(description),
      subgroups: features.includes("subgroups" as GPUFeatureName),
      shaderF16: features.includes("shader-f16"),
      maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
      maxBufferSize: device.limits.maxBufferSize,
      maxComputeWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
      maxComputeInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
    };
    const gpu = new Gpu(adapter, device, info);
    if (options.log) console.error(gpu.describe());
    return gpu;
  }

  /** One line naming the adapter and the limits that bound model size. */
  describe(): string {
    const i = this.info;
    const mib = (b: number) => `${Math.floor(b / 2 ** 20)} MiB`;
    return `GPU: ${i.description}${i.isSoftware ? " (software)" : ""}; ` +
      `max storage binding ${mib(i.maxStorageBufferBindingSize)}, ` +
      `max buffer ${mib(i.maxBufferSize)}, ` +
      `max workgroups per dimension ${i.maxComputeWorkgroupsPerDimension}` +
      `${i.subgroups ? ", subgroups" : ""}${i.shaderF16 ? ", shader-f16" : ""}`;
  }

  /** Number of dispatches recorded since the device was created. */
  get dispatchCount(): number {
    return this.#dispatchCount;
  }

  /**
   * Creates a tensor. Throws when its size exceeds the device's buffer or binding limit, naming
   * the tensor and the sizes.
   */
  tensor(shape: readonly number[], dtype: DType, label: string, extraUsage = 0): Tensor {
    this.#checkLost();
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) {
        throw new Error(`tensor '${label}': invalid shape ${fmtShape(shape)}`);
      }
    }
    const size = byteSize(shape, dtype);
    const limit = Math.min(this.info.maxBufferSize, this.info.maxStorageBufferBindingSize);
    if (size > limit) {
      throw new Error(
        `tensor '${label}' of shape ${fmtShape(shape)} (${dtype}) needs ${size} bytes, over this ` +
          `device's limit of ${limit} bytes per storage buffer (${this.info.description}). ` +
          `Store frozen weights as bf16 or use a smaller model.`,
      );
    }
    const buffer = this.device.createBuffer({
      label,
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST |
        extraUsage,
    });
    return { buffer, shape: [...shape], dtype, label };
  }

  /** Creates a tensor holding `data`: f32/u32/i32 arrays for those dtypes, Uint16Array for bf16/f16. */
  upload(
    data: Float32Array | Uint32Array | Int32Array | Uint16Array,
    shape: readonly number[],
    dtype: DType,
    label: string,
  ): Tensor {
    const t = this.tensor(shape, dtype, label);
    this.write(t, data);
    return t;
  }

  /** Writes `data` into `t` from element `offset`; queued before the next submission. */
  write(
    t: Tensor,
    data: Float32Array | Uint32Array | Int32Array | Uint16Array,
    offset = 0,
  ): void {
    const elementBytes = t.dtype === "bf16" || t.dtype === "f16" ? 2 : 4;
    const byteOffset = offset * elementBytes;
    if (byteOffset + data.byteLength > t.buffer.size) {
      throw new Error(
        `write to tensor '${t.label}': ${data.byteLength} bytes at offset ${byteOffset} exceed ` +
          `its ${t.buffer.size} bytes`,
      );
    }
    // writeBuffer needs a multiple of 4 bytes; pad an odd count of 16-bit values.
    let bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    this.flush();
    this.device.queue.writeBuffer(t.buffer, byteOffset, bytes);
  }

  /**
   * Returns a compute pipeline for `kernel` specialised by `key`, compiling `code()` only the
   * first time. A WGSL or pipeline error is reported, naming the kernel, by the next `sync`/`read`.
   */
  pipeline(kernel: string, key: string, code: () => string): GPUComputePipeline {
    const cacheKey = `${kernel}|${key}`;
    const cached = this.#pipelines.get(cacheKey);
    if (cached) return cached;
    const source = code();
    this.device.pushErrorScope("validation");
    const module = this.device.createShaderModule({ label: cacheKey, code: source });
    const pipeline = this.device.createComputePipeline({
      label: cacheKey,
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    this.#pending.push({ kernel: `${kernel} (${key})`, promise: this.device.popErrorScope() });
    this.#pipelines.set(cacheKey, pipeline);
    return pipeline;
  }

  /** Number of compiled pipelines in the cache. */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  /**
   * Records a dispatch of `pipeline` with storage `bindings` at @binding(0..n-1) of group 0 and,
   * when `params` is given, a uniform block at @binding(n). Throws when a workgroup count exceeds
   * the device limit, naming the kernel and the sizes.
   */
  dispatch(
    kernel: string,
    pipeline: GPUComputePipeline,
    bindings: readonly Binding[],
    workgroups: readonly [number, number?, number?],
    params?: ArrayBuffer,
  ): void {
    this.#checkLost();
    const [x, y = 1, z = 1] = workgroups;
    const max = this.info.maxComputeWorkgroupsPerDimension;
    for (const n of [x, y, z]) {
      if (!Number.isInteger(n) || n < 0 || n > max) {
        throw new KernelError(
          kernel,
          `dispatch of [${x}, ${y}, ${z}] workgroups exceeds this device's limit of ${max} per ` +
            `dimension`,
        );
      }
    }
    if (x === 0 || y === 0 || z === 0) return;

    const entries: GPUBindGroupEntry[] = bindings.map((b, i) => {
      if ("buffer" in b) return { binding: i, resource: { buffer: b.buffer } };
      return { binding: i, resource: { buffer: b.tensor.buffer, offset: b.offset, size: b.size } };
    });
    if (params) {
      if (params.byteLength > PARAMS_BYTES) {
        throw new KernelError(
          kernel,
          `params of ${params.byteLength} bytes exceed ${PARAMS_BYTES}`,
        );
      }
      const slot = this.#arenaAlloc();
      new Uint8Array(slot.data, slot.offset, params.byteLength).set(new Uint8Array(params));
      entries.push({
        binding: bindings.length,
        resource: { buffer: slot.buffer, offset: slot.offset, size: PARAMS_BYTES },
      });
    }
    const bindGroup = this.device.createBindGroup({
      label: kernel,
      layout: pipeline.getBindGroupLayout(0),
      entries,
    });
    let pass: GPUComputePassEncoder;
    const prof = this.#profile;
    if (prof && prof.kernels.length < PROFILE_CAPACITY) {
      // One pass per dispatch, timed by timestamps at its start and end.
      this.#endPass();
      const i = prof.kernels.length;
      prof.kernels.push(kernel);
      pass = this.#ensureEncoder().beginComputePass({
        timestampWrites: {
          querySet: prof.set,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
      this.#pass = pass;
    } else {
      pass = this.#computePass();
    }
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    if (prof) this.#endPass();
    this.#batchKernels.add(kernel);
    this.#dispatchCount++;
  }

  /** Records a buffer-to-buffer copy of `bytes` bytes. */
  copy(src: Tensor, srcOffset: number, dst: Tensor, dstOffset: number, bytes: number): void {
    this.#endPass();
    this.#ensureEncoder().copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, dstOffset, bytes);
  }

  /** Records zeroing of a whole tensor. */
  clear(t: Tensor): void {
    this.#endPass();
    this.#ensureEncoder().clearBuffer(t.buffer);
  }

  /** Submits every recorded dispatch as one command buffer. */
  flush(): void {
    if (!this.#encoder) return;
    this.#endPass();
    for (let c = 0; c <= this.#arenaChunk && c < this.#arenaChunks.length; c++) {
      const used = c < this.#arenaChunk ? ARENA_CHUNK_DISPATCHES * PARAMS_BYTES : this.#arenaSlot *
        PARAMS_BYTES;
      if (used > 0) {
        this.device.queue.writeBuffer(
          this.#arenaChunks[c].buffer,
          0,
          this.#arenaChunks[c].data,
          0,
          used,
        );
      }
    }
    const kernels = [...this.#batchKernels].join(", ");
    this.device.pushErrorScope("validation");
    this.device.pushErrorScope("out-of-memory");
    this.device.queue.submit([this.#encoder.finish()]);
    const submission = `submission of [${kernels}]`;
    this.#pending.push({
      kernel: `${submission} (out of memory)`,
      promise: this.device.popErrorScope(),
    });
    this.#pending.push({ kernel: submission, promise: this.device.popErrorScope() });
    this.#encoder = null;
    this.#batchKernels.clear();
    this.#arenaChunk = 0;
    this.#arenaSlot = 0;
  }

  /** Submits pending work, waits for the GPU, and throws any error recorded since the last check. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.#throwPending();
  }

  /** Copies a tensor (or `count` elements from `offset`) back to the CPU. */
  async read(
    t: Tensor,
    offset = 0,
    count?: number,
  ): Promise<Float32Array | Uint32Array | Int32Array> {
    const bytes = await this.readBytes(t, offset * 4, (count ?? numel(t.shape) - offset) * 4);
    if (t.dtype === "u32") return new Uint32Array(bytes);
    if (t.dtype === "i32") return new Int32Array(bytes);
    if (t.dtype === "f32") return new Float32Array(bytes);
    throw new Error(`read of tensor '${t.label}': use readBytes for packed ${t.dtype} tensors`);
  }

  /** Reads a tensor into a Float32Array; throws for integer tensors. */
  async readF32(t: Tensor, offset = 0, count?: number): Promise<Float32Array> {
    if (t.dtype !== "f32") throw new Error(`readF32 of tensor '${t.label}' with dtype ${t.dtype}`);
    return await this.read(t, offset, count) as Float32Array;
  }

  /** Copies `size` bytes from `byteOffset` of a tensor back to the CPU. */
  async readBytes(t: Tensor, byteOffset = 0, size?: number): Promise<ArrayBuffer> {
    const n = size ?? t.buffer.size - byteOffset;
    const padded = Math.ceil(n / 4) * 4;
    const staging = this.device.createBuffer({
      label: `read ${t.label}`,
      size: Math.max(4, padded),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.#endPass();
    this.#ensureEncoder().copyBufferToBuffer(t.buffer, byteOffset, staging, 0, padded);
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ);
    } catch (e) {
      await this.#throwPending();
      this.#checkLost();
      throw e;
    }
    const out = staging.getMappedRange().slice(0, n);
    staging.unmap();
    staging.destroy();
    await this.#throwPending();
    return out;
  }

  /**
   * Starts timing every dispatch with GPU timestamp queries (needs the adapter's
   * "timestamp-query" feature); `stopProfile` returns milliseconds per kernel name.
   */
  startProfile(): boolean {
    if (!this.device.features.has("timestamp-query")) return false;
    this.flush();
    this.#profile = {
      set: this.device.createQuerySet({ type: "timestamp", count: 2 * PROFILE_CAPACITY }),
      resolve: this.device.createBuffer({
        size: 16 * PROFILE_CAPACITY,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      }),
      kernels: [],
      totals: new Map(),
    };
    return true;
  }

  /** Stops profiling and returns GPU milliseconds per kernel name, summed over dispatches. */
  async stopProfile(): Promise<Map<string, number>> {
    const prof = this.#profile;
    if (!prof) return new Map();
    this.#endPass();
    const n = prof.kernels.length;
    if (n > 0) {
      this.#ensureEncoder().resolveQuerySet(prof.set, 0, 2 * n, prof.resolve, 0);
    }
    this.#profile = null;
    const totals = new Map<string, number>();
    if (n === 0) return totals;
    const staging = this.device.createBuffer({
      size: 16 * n,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.#ensureEncoder().copyBufferToBuffer(prof.resolve, 0, staging, 0, 16 * n);
    this.flush();
    await staging.mapAsync(GPUMapMode.READ);
    const stamps = new BigUint64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    for (let i = 0; i < n; i++) {
      const ms = Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6;
      totals.set(prof.kernels[i], (totals.get(prof.kernels[i]) ?? 0) + ms);
    }
    return totals;
  }

  /** Releases the device. */
  destroy(): void {
    this.flush();
    this.device.destroy();
  }

  #checkLost(): void {
    if (this.#lost) {
      throw new Error(
        `${this.#lost}. The work since the last checkpoint is lost; restart the command, with ` +
          `--resume where training.`,
      );
    }
  }

  async #throwPending(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    const messages: string[] = [];
    for (const p of pending) {
      const err = await p.promise;
      if (err) messages.push(`${p.kernel}: ${err.message}`);
    }
    if (this.#uncaptured.length) {
      messages.push(...this.#uncaptured.map((m) => `uncaptured GPU error: ${m}`));
      this.#uncaptured = [];
    }
    this.#checkLost();
    if (messages.length) throw new Error(`GPU error in ${messages.join("\n")}`);
  }

  #arenaAlloc(): { buffer: GPUBuffer; data: ArrayBuffer; offset: number } {
    if (this.#arenaSlot === ARENA_CHUNK_DISPATCHES) {
      this.#arenaChunk++;
      this.#arenaSlot = 0;
    }
    while (this.#arenaChunks.length <= this.#arenaChunk) {
      const size = ARENA_CHUNK_DISPATCHES * PARAMS_BYTES;
      this.#arenaChunks.push({
        buffer: this.device.createBuffer({
          label: `params arena ${this.#arenaChunks.length}`,
          size,
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        }),
        data: new ArrayBuffer(size),
      });
    }
    const chunk = this.#arenaChunks[this.#arenaChunk];
    const offset = this.#arenaSlot * PARAMS_BYTES;
    this.#arenaSlot++;
    new Uint8Array(chunk.data, offset, PARAMS_BYTES).fill(0);
    return { buffer: chunk.buffer, data: chunk.data, offset };
  }

  #ensureEncoder(): GPUCommandEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    return this.#encoder;
  }

  #computePass(): GPUComputePassEncoder {
    if (!this.#pass) this.#pass = this.#ensureEncoder().beginComputePass();
    return this.#pass;
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }
}

/** Builds a uniform params block from named values; `u` for u32, `i` for i32, `f` for f32. */
export function params(values: readonly (readonly ["u" | "i" | "f", number])[]): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(values.length / 4) * 16));
  const view = new DataView(buf);
  values.forEach(([kind, v], i) => {
    if (kind === "f") view.setFloat32(4 * i, v, true);
    else if (kind === "i") view.setInt32(4 * i, v, true);
    else view.setUint32(4 * i, v, true);
  });
  return buf;
}

/**
 * Splits `groups` workgroups over x and y so that neither exceeds `maxPerDim`; kernels recover the
 * linear index as `wid.x + wid.y * nx` where nx is the returned x count.
 */
export function grid(groups: number, maxPerDim = 65535): [number, number] {
  if (groups <= maxPerDim) return [groups, 1];
  const y = Math.ceil(groups / maxPerDim);
  return [Math.ceil(groups / y), y];
}

/**
 * Returns a tensor over the same buffer with another shape. The new shape may have fewer elements
 * than the buffer holds (a prefix view, e.g. the first rows of a workspace sized for the longest
 * batch); kernels read only what the shape covers.
 */
export function view(t: Tensor, shape: readonly number[], label = t.label): Tensor {
  const need = byteSize(shape, t.dtype);
  if (need > t.buffer.size) {
    throw new Error(
      `view of tensor '${t.label}' as ${fmtShape(shape)} needs ${need} bytes, it has ` +
        `${t.buffer.size}`,
    );
  }
  return { buffer: t.buffer, shape: [...shape], dtype: t.dtype, label };
}
