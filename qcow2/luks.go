package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// LUKS1 header layout (the LUKS On-Disk Format Specification 1.2.3), as
// qcow2 stores it in the cluster the crypto header extension points at.
const (
	luksHeaderSize   = 592
	luksSlots        = 8
	luksSlotEnabled  = 0x00AC71F3
	luksSectorSize   = 512
	luksMagic        = "LUKS\xba\xbe"
	luksSlotOffset   = 208
	luksSlotSize     = 48
	luksNameFieldLen = 32
)

// LUKSSlot is one key slot of a LUKS header, as qemu-img info lists it.
type LUKSSlot struct {
	Active    bool    `json:"active"`
	Iters     *uint32 `json:"iters,omitempty"`
	Stripes   *uint32 `json:"stripes,omitempty"`
	KeyOffset uint64  `json:"key-offset"`
}

// parseLUKS decodes a LUKS1 header into qemu-img's description of it.
func parseLUKS(b []byte) (*EncryptInfo, error) {
	if len(b) < luksHeaderSize || string(b[:6]) != luksMagic {
		return nil, formatErr(-1, "encryption header is not a LUKS header")
	}
	be := binary.BigEndian
	if v := be.Uint16(b[6:]); v != 1 {
		return nil, formatErr(-1, "unsupported LUKS version %d", v)
	}
	cipher := cString(b[8:40])
	mode := cString(b[40:72])
	hash := cString(b[72:104])
	keyBytes := be.Uint32(b[108:])
	info := &EncryptInfo{
		Format:         "luks",
		HashAlg:        strings.ToLower(hash),
		PayloadOffset:  ptr(uint64(be.Uint32(b[104:])) * luksSectorSize),
		MasterKeyIters: ptr(be.Uint32(b[164:])),
		UUID:           string(bytes.TrimRight(b[168:208], "\x00")),
	}
	// cipher_mode is "MODE-IVGEN[:HASH]", e.g. "xts-plain64", "cbc-essiv:sha256".
	m, ivgen, _ := strings.Cut(mode, "-")
	info.CipherMode = m
	ivgen, ivhash, hasHash := strings.Cut(ivgen, ":")
	info.IvgenAlg = ivgen
	if ivgen == "essiv" && hasHash {
		info.IvgenHashAlg = ivhash
	}
	if m == "xts" {
		keyBytes /= 2
	}
	alg, err := luksCipherAlg(cipher, keyBytes)
	if err != nil {
		return nil, err
	}
	info.CipherAlg = alg
	for i := 0; i < luksSlots; i++ {
		s := b[luksSlotOffset+i*luksSlotSize:]
		slot := LUKSSlot{Active: be.Uint32(s) == luksSlotEnabled, KeyOffset: uint64(be.Uint32(s[40:])) * luksSectorSize}
		if slot.Active {
			slot.Iters = ptr(be.Uint32(s[4:]))
			slot.Stripes = ptr(be.Uint32(s[44:]))
		}
		info.Slots = append(info.Slots, slot)
	}
	return info, nil
}

// luksCipherAlg names the cipher as QEMU's QCryptoCipherAlgorithm does.
func luksCipherAlg(name string, keyBytes uint32) (string, error) {
	bits := keyBytes * 8
	switch name {
	case "aes", "serpent", "twofish":
		if bits == 128 || bits == 192 || bits == 256 {
			return fmt.Sprintf("%s-%d", name, bits), nil
		}
	case "cast5":
		if bits == 128 {
			return "cast5-128", nil
		}
	case "sm4":
		if bits == 128 {
			return "sm4", nil
		}
	}
	return "", fmt.Errorf("%w: LUKS cipher %q with a %d-bit key", ErrUnsupported, name, bits)
}

// luksInfo reads and decodes the LUKS header of an encrypted image.
func (f *File) luksInfo() (*EncryptInfo, error) {
	c := f.Header.Crypto
	if c == nil {
		return nil, withFile(f.Name, formatErr(-1, "LUKS encryption without a crypto header extension"))
	}
	if c.Length < luksHeaderSize || c.Offset > uint64(f.size) || luksHeaderSize > uint64(f.size)-c.Offset {
		return nil, withFile(f.Name, formatErr(int64(c.Offset), "LUKS header at %#x (%d bytes) is past the end of the file", c.Offset, c.Length))
	}
	b := make([]byte, luksHeaderSize)
	if _, err := f.r.ReadAt(b, int64(c.Offset)); err != nil {
		return nil, withFile(f.Name, err)
	}
	info, err := parseLUKS(b)
	return info, withFile(f.Name, err)
}
