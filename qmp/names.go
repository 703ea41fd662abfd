package qmp

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// MaxNameLen is the longest node name or job id QEMU accepts: node names
// live in a 32-byte buffer including the terminating NUL
// (BlockDriverState.node_name), and qchain keeps job ids to the same bound.
const MaxNameLen = 31

// namePrefix marks the names qchain makes, so they can be told from
// QEMU's automatic "#blockNNN" names and from names other tools chose.
const namePrefix = "qchain-"

// hashLen is how many hex digits of SHA-256 a shortened name keeps.
const hashLen = 8

// JobID returns the deterministic job id of operation op ("commit",
// "stream", "mirror", ...) on disk, e.g. "qchain-commit-vda". The same
// inputs always give the same id, so a later process can find a job that
// an earlier one started. Ids that would be longer than MaxNameLen, or
// that contain characters QEMU rejects, are shortened and made unique with
// a hash of the full name.
func JobID(op, disk string) string {
	return makeName(op + "-" + disk)
}

// NodeName returns a deterministic node name for role ("overlay",
// "target", ...) and key (a disk name or file path), following the same
// rules as JobID.
func NodeName(role, key string) string {
	return makeName(role + "-" + key)
}

// makeName builds "qchain-" + s when that is a well-formed QEMU id of at
// most MaxNameLen bytes, and otherwise a sanitised, truncated prefix of it
// followed by "-" and a hash of s.
func makeName(s string) string {
	full := namePrefix + s
	if len(full) <= MaxNameLen && WellFormedName(full) {
		return full
	}
	sum := sha256.Sum256([]byte(s))
	suffix := "-" + hex.EncodeToString(sum[:])[:hashLen]
	var b strings.Builder
	for i := 0; i < len(full) && b.Len() < MaxNameLen-len(suffix); i++ {
		ch := full[i]
		if !isNameChar(ch) {
			ch = '_'
		}
		b.WriteByte(ch)
	}
	return b.String() + suffix
}

// WellFormedName reports whether s is a valid QEMU id (node name, job id):
// it starts with a letter and has only letters, digits, '-', '.' and '_'
// (QEMU's id_wellformed), and is at most MaxNameLen bytes long.
func WellFormedName(s string) bool {
	if s == "" || len(s) > MaxNameLen || !isLetter(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

func isLetter(ch byte) bool { return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' }

func isNameChar(ch byte) bool {
	return isLetter(ch) || ch >= '0' && ch <= '9' || ch == '-' || ch == '.' || ch == '_'
}
