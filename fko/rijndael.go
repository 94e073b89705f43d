package fko

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/md5"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
)

// Mode is the Rijndael mode of a stanza (ENCRYPTION_MODE).
type Mode int

// Supported modes. fwknop also has ECB, CFB, OFB, CTR and PCBC through its
// own rijndael.c; postern refuses them by name rather than guess at them.
const (
	CBC Mode = iota
	// LegacyCBC is pre-2.5 fwknop's key handling: keys shorter than 16
	// bytes are right-padded with '0' to 16, longer ones cut to 16.
	LegacyCBC
)

// ParseMode reads ENCRYPTION_MODE / -M values.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "cbc":
		return CBC, nil
	case "legacy":
		return LegacyCBC, nil
	}
	return 0, fmt.Errorf("encryption mode %q is not supported (cbc or legacy)", s)
}

const (
	saltedPrefix   = "Salted__"
	rijndaelB64    = "U2FsdGVkX1" // base64 of "Salted__" and the salt's first bits, constant
	maxRijndaelKey = 32
)

// bytesToKey is OpenSSL's EVP_BytesToKey(MD5, salt, pw, count=1): the key
// derivation fwknop's rij_salt_and_iv() implements.
func bytesToKey(pw, salt []byte) (key, iv []byte) {
	var d, out []byte
	for len(out) < 48 {
		h := md5.New()
		h.Write(d)
		h.Write(pw)
		h.Write(salt)
		d = h.Sum(nil)
		out = append(out, d...)
	}
	return out[:32], out[32:48]
}

func cipherKey(key []byte, mode Mode) ([]byte, error) {
	if len(key) == 0 || len(key) > maxRijndaelKey {
		return nil, fmt.Errorf("fko: Rijndael key must be 1 to %d bytes", maxRijndaelKey)
	}
	if mode == LegacyCBC {
		k := append([]byte(nil), key[:min(len(key), 16)]...)
		for len(k) < 16 {
			k = append(k, '0')
		}
		return k, nil
	}
	return key, nil
}

// rijndaelEncrypt returns the base64 text (without '=') of
// "Salted__" ‖ salt ‖ AES-256-CBC(PKCS#7(pt)), the prefix included.
func rijndaelEncrypt(pt string, key []byte, mode Mode, salt []byte) (string, error) {
	pw, err := cipherKey(key, mode)
	if err != nil {
		return "", err
	}
	if salt == nil {
		salt = make([]byte, 8)
		if _, err := rand.Read(salt); err != nil {
			return "", err
		}
	}
	k, iv := bytesToKey(pw, salt)
	block, _ := aes.NewCipher(k)
	pad := 16 - len(pt)%16
	buf := append([]byte(pt), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(buf, buf)
	raw := append(append([]byte(saltedPrefix), salt...), buf...)
	return b64.EncodeToString(raw), nil
}

var errDecrypt = errors.New("decryption failed (wrong key or not a Rijndael packet)")

// rijndaelDecrypt reverses rijndaelEncrypt. Like fwknop it insists that the
// plaintext starts with 16 digits and ':', its cheap "right key" test.
func rijndaelDecrypt(text string, key []byte, mode Mode) (string, error) {
	pw, err := cipherKey(key, mode)
	if err != nil {
		return "", err
	}
	raw, err := b64Decode(text)
	if err != nil || len(raw) < 32 || string(raw[:8]) != saltedPrefix || (len(raw)-16)%16 != 0 {
		return "", errDecrypt
	}
	k, iv := bytesToKey(pw, raw[8:16])
	block, _ := aes.NewCipher(k)
	pt := make([]byte, len(raw)-16)
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, raw[16:])
	// fwknop leaves bad padding in place and lets the digest fail; strip
	// it only when it is valid.
	if n := int(pt[len(pt)-1]); n >= 1 && n <= 16 && bytes.Equal(pt[len(pt)-n:], bytes.Repeat([]byte{byte(n)}, n)) {
		pt = pt[:len(pt)-n]
	}
	if len(pt) < 17 || !allDigits(string(pt[:16])) || pt[16] != ':' {
		return "", errDecrypt
	}
	return string(pt), nil
}
