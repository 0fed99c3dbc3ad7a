package store

import "encoding/pem"

// pemBlock returns the bytes of the first PEM block in b, or nil.
func pemBlock(b []byte) []byte {
	if blk, _ := pem.Decode(b); blk != nil {
		return blk.Bytes
	}
	return nil
}
