/* dualparal: the Wan2.1 VAE decoder, streaming.
 *
 * Numerically the decoder half of diffusers' AutoencoderKLWan as WanPipeline
 * uses it: latent de-normalisation (z = latent * latents_std + latents_mean,
 * per channel, from vae/config.json), post_quant_conv, then the causal 3D
 * decoder run one latent frame at a time.  Every causal k=3 convolution keeps
 * the last 2 frames of its input as a cache (zeros at the start of a video);
 * the temporal upsamplers skip their time convolution on the first latent
 * frame and run it with zero history on the second, exactly as diffusers'
 * feat_cache does.  So latent frame 0 gives 1 video frame and every later
 * one gives 2^(temporal upsamplers) = 4 (Wan2.1): F latent frames decode to
 * 1 + 4 (F - 1) frames, 8x the latent size (2^(levels-1)).
 *
 * The Wan2.2 VAE (TI2V-5B: is_residual, patch_size 2, z_dim 48) runs in the
 * same structure: its residual up blocks add DupUp3D(block input) (channels
 * duplicated into 2x2 pixels and, with a temporal upsampler, 2 frames; the
 * first latent frame keeps only the last of those, diffusers' first_chunk) to
 * the output of their resnets and upsampler, whose width stays the block's.
 * The decoder's 12 output channels are unpatchified 2x2 on the host (3
 * channels, 16x the latent size).
 *
 * Streaming is the only code path: dp_wan_vae_decode() (a whole video) is a
 * loop over dp_wan_vae_decoder_push(), so both give bitwise the same frames.
 *
 * Output: the decoder's float video clamped to [-1, 1] (diffusers'
 * vae.decode), and 8-bit RGB as the pipeline's PIL / uint8 path makes it:
 * v = clamp (x * 0.5 + 0.5, 0, 1) in float, pixel = round_half_even (v * 255)
 * (VaeImageProcessor.denormalize then numpy_to_pil).
 *
 * Precision and backends: weights and activations are F32 on every backend
 * (the published Wan VAE is F32 and diffusers' pipeline runs it in F32); the
 * mid-block attention's q, k, v go through be->act_dtype like the DiT's.
 * Operations used: conv3d, channel_rms_norm, copy_cols, transpose, attention,
 * upsample_nearest2x, add, mul, copy, fill, to_device, to_host, sync.
 *
 * Memory: a decoder object is made for one latent size; it allocates its
 * causal caches, two ping-pong activation arenas and a scratch arena (sized by
 * a measuring pass) and a host staging buffer once.  Pushing a frame
 * allocates nothing.  Not thread-safe: one decoder per thread; several
 * decoders may share one dp_wan_vae.
 */
#ifndef DUALPARAL_WAN_VAE_H
#define DUALPARAL_WAN_VAE_H

#include "dualparal/backend.h"

G_BEGIN_DECLS

#define DP_WAN_VAE_MAX_LEVELS 8
#define DP_WAN_VAE_MAX_Z 64

/* From vae/config.json (diffusers key names in comments). */
typedef struct {
  int base_dim;        /* decoder width: decoder_base_dim, or base_dim when that is null */
  int z_dim;           /* latent channels (16) */
  int n_levels;        /* length of dim_mult (4) */
  int dim_mult[DP_WAN_VAE_MAX_LEVELS];
  int num_res_blocks;  /* the decoder has num_res_blocks + 1 resnets per up block */
  /* Up block i < n_levels - 1 doubles time too (temperal_downsample reversed). */
  gboolean temporal_upsample[DP_WAN_VAE_MAX_LEVELS];
  int out_channels;    /* the decoder's output channels: 3, or 3 * patch_size^2 (Wan2.2: 12) */
  gboolean is_residual;/* Wan2.2: residual up blocks (WanResidualUpBlock, DupUp3D shortcuts) */
  int patch_size;      /* pixel patchify (Wan2.2: 2; 1 when null): the output is unpatchified */
  int video_channels;  /* out_channels / patch_size^2: the video's channels (3) */
  float latents_mean[DP_WAN_VAE_MAX_Z];
  float latents_std[DP_WAN_VAE_MAX_Z];
  int spatial_scale;   /* 2^(n_levels - 1) * patch_size: 8 (Wan2.1), 16 (Wan2.2) */
  int temporal_scale;  /* 2^(number of temporal upsamplers): 4 */
} dp_wan_vae_config;

typedef struct dp_wan_vae dp_wan_vae;

/* Reads vae_dir/config.json and the decoder's weights (post_quant_conv.*,
 * decoder.*; every shape checked; encoder tensors are ignored) onto be (not
 * owned; it must outlive the dp_wan_vae).  Both the Wan2.1 VAE and the
 * Wan2.2 one (is_residual, patch_size, z_dim 48) load; a backend without the
 * operations listed above is refused with DP_ERROR_UNSUPPORTED.  Errors name
 * the file and the key or tensor. */
dp_wan_vae *dp_wan_vae_load (dp_backend *be, const char *vae_dir, GError **error);
void dp_wan_vae_free (dp_wan_vae *vae);
const dp_wan_vae_config *dp_wan_vae_get_config (const dp_wan_vae *vae);
/* The backend the VAE was loaded on (borrowed). */
dp_backend *dp_wan_vae_get_backend (const dp_wan_vae *vae);
/* Video frames decoded from latent_frames latent frames: 1 + temporal_scale * (latent_frames - 1). */
int64_t dp_wan_vae_num_frames (const dp_wan_vae *vae, int64_t latent_frames);

typedef struct dp_wan_vae_decoder dp_wan_vae_decoder;

/* A streaming decoder for latents of latent_height x latent_width; the video
 * is spatial_scale times larger.  Allocates everything it will need (causal
 * caches, arenas, host staging); fails with DP_ERROR_NOMEM when that does not
 * fit.  Starts at the beginning of a video. */
dp_wan_vae_decoder *dp_wan_vae_decoder_new (dp_wan_vae *vae, int latent_height, int latent_width,
                                            GError **error);

/* Tiled decode (diffusers' AutoencoderKLWan.enable_tiling): the latent frame
 * is cut into overlapping spatial tiles, each decoded by its own causal
 * decoder (its own conv caches, so streaming stays exact per tile), and the
 * overlaps are blended linearly as diffusers' tiled_decode does (top, then
 * left neighbour, in raster order; then each tile keeps its first stride
 * rows / columns).  What it saves: the activation arenas are sized for one
 * tile instead of the frame (the decoder's peak, at full resolution); the
 * causal caches of all tiles together are a little larger than one frame's
 * (the overlaps).  Sizes are video pixels, multiples of spatial_scale; a
 * tile of 0 is untiled.  Tiling applies only when the latents exceed one
 * tile (as diffusers), so a tile covering the frame decodes exactly as
 * untiled.  diffusers' defaults: tile 256, stride 192. */
typedef struct {
  int tile_height, tile_width;
  int stride_height, stride_width;
} dp_wan_vae_tiling;

/* tile x tile pixels with a stride of 3/4 of it, rounded down to a
 * multiple of scale (the VAE's spatial_scale), at least scale: diffusers'
 * 256 / 192 for 256. */
void dp_wan_vae_tiling_default (int tile_pixels, int scale, dp_wan_vae_tiling *tiling);
/* DP_ERROR_INVALID naming the axis when a size is not a positive multiple of
 * the VAE's spatial_scale or a stride exceeds its tile; NULL or all zero is fine. */
gboolean dp_wan_vae_tiling_check (const dp_wan_vae_config *cfg, const dp_wan_vae_tiling *tiling, GError **error);
/* Whether latents of this size are decoded in tiles. */
gboolean dp_wan_vae_tiling_active (const dp_wan_vae_config *cfg, const dp_wan_vae_tiling *tiling,
                                   int latent_height, int latent_width);
/* The arithmetic, along one axis, in latent units (tile_latent 0: one tile):
 * tiles start every stride_latent, ceil (extent / stride) of them; tile
 * `index` starts at *start and has *size = min (tile, extent - start). */
int dp_wan_vae_tile_count (int latent_extent, int tile_latent, int stride_latent);
void dp_wan_vae_tile_span (int index, int latent_extent, int tile_latent, int stride_latent, int *start, int *size);
/* Rows (columns) blended between two neighbours of prev_size and cur_size
 * decoded pixels with an overlap of `overlap`: the smallest of the three. */
int dp_wan_vae_blend_extent (int prev_size, int cur_size, int overlap);
/* At offset i < extent of the blend: out = prev * prev_weight + cur * cur_weight,
 * prev_weight = 1 - i / extent, cur_weight = i / extent (rounded to F32 as in PyTorch). */
void dp_wan_vae_blend_weights (int i, int extent, float *prev_weight, float *cur_weight);

/* A streaming decoder as dp_wan_vae_decoder_new, tiled per `tiling` (NULL:
 * untiled).  DP_ERROR_INVALID for bad tile sizes. */
dp_wan_vae_decoder *dp_wan_vae_decoder_new_tiled (dp_wan_vae *vae, int latent_height, int latent_width,
                                                  const dp_wan_vae_tiling *tiling, GError **error);
/* The tile grid in use (1 x 1 when untiled). */
void dp_wan_vae_decoder_get_tiles (const dp_wan_vae_decoder *dec, int *rows, int *cols);
void dp_wan_vae_decoder_free (dp_wan_vae_decoder *dec);
/* Starts a new video: clears the causal caches. */
void dp_wan_vae_decoder_reset (dp_wan_vae_decoder *dec);
/* Output frame size in pixels. */
void dp_wan_vae_decoder_get_size (const dp_wan_vae_decoder *dec, int *width, int *height);
/* The most frames one push gives (temporal_scale), to size output buffers. */
int dp_wan_vae_decoder_max_frames (const dp_wan_vae_decoder *dec);
/* Backend memory the decoder holds (caches, arenas), in bytes. */
size_t dp_wan_vae_decoder_memory_bytes (const dp_wan_vae_decoder *dec);
/* Of which the causal caches of all tiles (they persist between pushes: a
 * tiled decoder keeps every tile's, so tiling shrinks the arenas, not these). */
size_t dp_wan_vae_decoder_cache_bytes (const dp_wan_vae_decoder *dec);
/* Latent frames pushed since the start of the video. */
int64_t dp_wan_vae_decoder_position (const dp_wan_vae_decoder *dec);

/* Decodes latent frame `index` of latents as the next frame of the video.
 * latents: F32 backend tensor [z_dim, F, h, w] (or [z_dim, h, w], F = 1) of
 * normalised latents, as the sampler leaves them, 0 <= index < F.
 * Writes *n_frames frames (1 for the first latent frame of a video, then
 * temporal_scale) to the host buffers that are not NULL:
 *   rgb   [n, H, W, 3] uint8 (frame, row, column, R G B)
 *   video [3, n, H, W] float, the decoder output clamped to [-1, 1]
 * Both must hold max_frames frames.  On error the decoder's caches are in an
 * undefined state: reset it before decoding again. */
gboolean dp_wan_vae_decoder_push (dp_wan_vae_decoder *dec, const dp_tensor *latents, int64_t index,
                                  uint8_t *rgb, float *video, int *n_frames, GError **error);

/* Whole-video convenience over a fresh decoder: latents [z_dim, F, h, w]
 * (F32, backend memory) -> rgb [n, H, W, 3] and / or video [3, n, H, W] with
 * n = dp_wan_vae_num_frames (vae, F) (host buffers, NULL to skip). */
gboolean dp_wan_vae_decode (dp_wan_vae *vae, const dp_tensor *latents, uint8_t *rgb, float *video,
                            GError **error);

G_END_DECLS

#endif
