package qmp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// lineReader splits a byte stream into newline-terminated lines of bounded
// length. bufio.Scanner (which go-qemu's SocketMonitor uses) stops the whole
// stream at 64 KiB; here the bound is explicit and large.
type lineReader struct {
	br  *bufio.Reader
	max int
}

// readBufferSize is the size of the bufio buffer; lines longer than it are
// assembled from several reads.
const readBufferSize = 64 << 10

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, readBufferSize), max: max}
}

// readLine returns the next line without its terminator. The slice is
// owned by the caller. Blank lines are skipped. A final line without a
// newline before EOF is returned as a line; the next call reports io.EOF.
func (lr *lineReader) readLine() ([]byte, error) {
	for {
		line, err := lr.readRaw()
		if err != nil {
			if len(line) > 0 && errors.Is(err, io.EOF) {
				return trimEOL(line), nil
			}
			return nil, err
		}
		line = trimEOL(line)
		if len(line) == 0 {
			continue
		}
		return line, nil
	}
}

func (lr *lineReader) readRaw() ([]byte, error) {
	var acc []byte
	for {
		frag, err := lr.br.ReadSlice('\n')
		if len(acc)+len(frag) > lr.max+2 { // +2 for "\r\n"
			return nil, fmt.Errorf("%w: more than %d bytes", ErrLineTooLong, lr.max)
		}
		switch {
		case err == nil:
			if acc == nil {
				return append([]byte(nil), frag...), nil
			}
			return append(acc, frag...), nil
		case errors.Is(err, bufio.ErrBufferFull):
			if acc == nil {
				acc = make([]byte, 0, 2*len(frag))
			}
			acc = append(acc, frag...)
		default:
			return append(acc, frag...), err
		}
	}
}

func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
