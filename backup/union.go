package backup

import (
	"fmt"
	"path/filepath"

	"github.com/qchain/qchain/qmp"
)

// unionBitmapName is the temporary bitmap (on the active node, not
// persistent, disabled) into which an incremental point gathers the
// previous point's bitmaps of every layer, in the transaction that starts
// its job.
func unionBitmapName(newBitmap string) string { return "qchain-union-" + newBitmap }

// bitmapUnion returns the bitmaps whose union records every write to a
// disk since the point whose bitmap is want, or why there are none to
// trust. Snapshots move a recording bitmap to each new active image and
// disable the old one (package chain), so the writes since the point are
// in the same-named bitmaps of the layers from the active image down to
// the image that was active at the point: the active image's must be
// there, recording; each layer below that has it, consistent; and no layer
// below the first one without it may have it (a gap: the writes recorded
// by a layer that went are in none of them).
func bitmapUnion(target string, layers []layerBitmaps, want string, point int64) (sources []qmp.BlockDirtyBitmap, reason string) {
	find := func(l layerBitmaps) *qmp.DirtyBitmapInfo {
		for i := range l.Bitmaps {
			if l.Bitmaps[i].Name == want {
				return &l.Bitmaps[i]
			}
		}
		return nil
	}
	if len(layers) == 0 {
		return nil, fmt.Sprintf("disk %s: no image", target)
	}
	top := find(layers[0])
	switch {
	case top == nil:
		for _, l := range layers[1:] {
			if find(l) == nil {
				continue
			}
			return nil, fmt.Sprintf("disk %s: its active image %s has no bitmap %s, which %s below has (a snapshot operation was interrupted before the bitmaps moved, or the disk was reverted, since point %d)",
				target, filepath.Base(layers[0].File), want, filepath.Base(l.File), point)
		}
		return nil, fmt.Sprintf("disk %s: its active image %s has no bitmap %s (a snapshot operation could not keep it, or qemu did not close the image)", target, filepath.Base(layers[0].File), want)
	case top.Inconsistent:
		return nil, fmt.Sprintf("disk %s: bitmap %s is inconsistent (qemu did not close the image cleanly)", target, want)
	case !top.Recording:
		return nil, fmt.Sprintf("disk %s: bitmap %s is disabled", target, want)
	case top.Busy:
		return nil, fmt.Sprintf("disk %s: bitmap %s is in use by another job", target, want)
	}
	sources = append(sources, qmp.BlockDirtyBitmap{Node: layers[0].Node, Name: want})
	end := len(layers)
	for i := 1; i < len(layers); i++ {
		b := find(layers[i])
		if b == nil {
			end = i
			break
		}
		switch {
		case b.Inconsistent:
			return nil, fmt.Sprintf("disk %s: bitmap %s of %s is inconsistent (qemu did not close the image cleanly)", target, want, filepath.Base(layers[i].File))
		case b.Busy:
			return nil, fmt.Sprintf("disk %s: bitmap %s of %s is in use by another job", target, want, filepath.Base(layers[i].File))
		}
		sources = append(sources, qmp.BlockDirtyBitmap{Node: layers[i].Node, Name: want})
	}
	for i := end + 1; i < len(layers); i++ {
		if find(layers[i]) != nil {
			return nil, fmt.Sprintf("disk %s: bitmap %s is on %s but not on %s above it: the writes recorded between are in no bitmap",
				target, want, filepath.Base(layers[i].File), filepath.Base(layers[end].File))
		}
	}
	return sources, ""
}
