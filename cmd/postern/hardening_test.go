package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/postern/postern/covert"
	"github.com/postern/postern/fko"
	"github.com/postern/postern/internal/netnstest"
	"github.com/postern/postern/knock"
	"github.com/postern/postern/port"
)

// The red-team review's findings, each against the real daemon.

// daemonStatus reads a field of /proc/PID/status of the running daemon.
func (r *rig) daemonStatus(field string) string {
	r.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.daemon.Process.Pid))
	if err != nil {
		r.t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	r.t.Fatalf("no %s in /proc status", field)
	return ""
}

// A GnuPG decompression bomb (200 MB of zeros, bzip2, encrypted to the
// server's key: one UDP packet) must neither grow the daemon nor stall an
// SPA knock sent right after it.
func TestGnuPGBomb(t *testing.T) {
	t.Parallel()
	netnstest.Require(t, "gpg")
	dir := t.TempDir()
	home := filepath.Join(dir, "server-gnupg")
	fpr := gpgKey(t, home, "postern server <server@postern.test>")
	bomb := exec.Command("sh", "-c", fmt.Sprintf("head -c 200000000 /dev/zero | gpg --homedir %s --batch --trust-model always "+
		"--compress-algo bzip2 --bzip2-compress-level 9 -e -r %s", home, fpr))
	ct, err := bomb.Output()
	if err != nil {
		t.Fatalf("making the bomb: %v", err)
	}
	text := base64.RawStdEncoding.EncodeToString(ct)
	if !strings.HasPrefix(text, "hQ") || len(text) > 1500 {
		t.Fatalf("bomb packet: %d base64 characters, prefix %q", len(text), text[:2])
	}
	wire := text[2:] // fwknop strips GnuPG's "hQ" on the wire
	access := filepath.Join(dir, "access.conf")
	os.WriteFile(access, []byte(fmt.Sprintf("SOURCE ANY\nGPG_HOME_DIR %s\nGPG_DECRYPT_ID %s\nGPG_ALLOW_NO_PW Y\nGPG_DISABLE_SIG Y\nOPEN_PORTS tcp/22\n",
		home, fpr)), 0o644)
	r := newRig(t, rigOptions{extra: fmt.Sprintf("\n[fwknop]\naccess_file = %q\n", access)})
	r.start()
	r.out.WaitFor(t, time.Second, "GnuPG stanza without HMAC_KEY")
	r.sendRaw(r.p.Client6, r.p.Server6, []byte(wire))
	r.knock(r.p.Server4)
	r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "SPA knock right after the bomb").Close()
	r.out.WaitFor(t, 30*time.Second, "msg=refused language=fwknop", "src="+r.p.Client6.String())
	hwm := r.daemonStatus("VmHWM")
	kb, _ := strconv.Atoi(strings.Fields(hwm)[0])
	if kb > 64<<10 {
		t.Fatalf("daemon peak RSS %s after the bomb, want under 64 MB", hwm)
	}
	t.Logf("daemon peak RSS after the bomb: %s", hwm)
}

// An fwknop knock re-encoded on the way (the unused low bits of its last
// base64 character flipped: other text, the same ciphertext) is the same
// knock: refused as a replay or as malformed, never granted.
func TestFwknopReplayByReencoding(t *testing.T) {
	t.Parallel()
	r := fwknopRig(t, "SOURCE ANY\nKEY_BASE64 "+fwKey+"\nOPEN_PORTS tcp/22\nFW_ACCESS_TIMEOUT 30\n")
	r.start()
	srv := r.p.Server4
	sniffed := r.sniff()
	r.fwknop("-A", "tcp/22", "-s", "-D", srv.String(), "--key-base64-rijndael", fwKey)
	pkt := <-sniffed
	r.waitOpen(r.p.Client4, srv, time.Second, "the original knock").Close()
	r.out.WaitFor(t, time.Second, "msg=granted language=fwknop src="+r.p.Client4.String())
	// fwknop strips the 10 characters of "Salted__" from the text: the
	// last character carries len%4 of the whole text's unused low bits.
	unused := map[int]byte{2: 0x0f, 3: 0x03}[(len(pkt)+10)%4]
	if unused == 0 {
		t.Fatalf("packet of %d characters: its last character has no unused bits", len(pkt))
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	moved := append([]byte(nil), pkt...)
	i := strings.IndexByte(alphabet, moved[len(moved)-1])
	moved[len(moved)-1] = alphabet[i^int(unused&1)]
	mark := r.out.Mark()
	r.sendRaw(r.p.Client4b, srv, moved)
	r.out.WaitAfter(t, mark, 2*time.Second, "msg=refused language=fwknop", "src="+r.p.Client4b.String())
	r.requireClosed(r.p.Client4b, srv, "the observer after re-encoding the knock")
	if strings.Contains(r.out.String()[mark:], "msg=granted language=fwknop src="+r.p.Client4b.String()) {
		t.Fatalf("the re-encoded knock was granted:\n%s", r.out.String()[mark:])
	}
}

// 3 000 spoofed sources each complete a door with start and stop commands
// (6 000 packets in about 3 s): completions are rate-limited per door and
// pending stop commands bounded, the journal stays small, and an SPA knock
// sent in the middle opens within a second.
func TestSpoofedCompletionFlood(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{extra: `
[[door]]
name = "cmd"
sequence = ["tcp/7000", "tcp/8000"]
seq_timeout = "5s"
start_command = "true"
stop_command = "true"
cmd_timeout = "60s"
`})
	r.start()
	spoof := r.spoofer()
	buf := make([]byte, 64)
	src := netip.MustParseAddr("2001:db8:ee::").As16()
	start := time.Now()
	for i := range 3000 {
		src[14], src[15] = byte(i>>8), byte(i)
		s := netip.AddrFrom16(src)
		spoof(synFrom(buf, s, r.p.Server6, 7000))
		spoof(synFrom(buf, s, r.p.Server6, 8000))
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Millisecond)))
		if i == 1500 {
			knocked := time.Now()
			r.knock(r.p.Server4)
			r.waitOpen(r.p.Client4, r.p.Server4, time.Second, "SPA knock during the completion flood").Close()
			t.Logf("SPA knock opened %v after it was sent, mid-flood", time.Since(knocked).Round(time.Millisecond))
		}
	}
	r.alive()
	if n := r.metric("door", "door rate limited"); n < 2000 {
		t.Fatalf("only %d completions rate-limited of 3 000", n)
	}
	journal, _ := os.ReadFile(filepath.Join(r.dir, "state", "pending-commands.json"))
	if lines := strings.Count(string(journal), "\n"); lines > 200 {
		t.Fatalf("pending-command journal of %d lines after the flood", lines)
	}
}

// syn4Frame builds an Ethernet frame carrying an IPv4 TCP SYN, optionally
// with an 802.1Q tag and a corrupted IPv4 header checksum.
func syn4Frame(dstMAC, srcMAC net.HardwareAddr, vlan uint16, src, dst netip.Addr, dport uint16, badSum bool) []byte {
	f := hit4Frame(dstMAC, srcMAC, src, dst, tcpHit(dport), 0x02)
	if badSum {
		f[14+10] ^= 0x40
	}
	if vlan != 0 {
		tag := binary.BigEndian.AppendUint16([]byte{0x81, 0x00}, vlan)
		f = append(f[:12:12], append(tag, f[12:]...)...)
	}
	return f
}

// hit4Frame builds an Ethernet frame carrying one IPv4 knock hit: a TCP
// segment with the given flags or a 1-byte UDP datagram.
func hit4Frame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, h knock.Hit, tcpFlags uint8) []byte {
	var f []byte
	f = append(f, dstMAC...)
	f = append(f, srcMAC...)
	f = binary.BigEndian.AppendUint16(f, 0x0800)
	proto, l4 := byte(unix.IPPROTO_TCP), make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], 40001)
	binary.BigEndian.PutUint16(l4[2:], h.Num)
	sumAt := 16
	if h.Proto == port.UDP {
		proto, l4, sumAt = unix.IPPROTO_UDP, make([]byte, 9), 6
		binary.BigEndian.PutUint16(l4[0:], 40001)
		binary.BigEndian.PutUint16(l4[2:], h.Num)
		binary.BigEndian.PutUint16(l4[4:], 9)
	} else {
		l4[12], l4[13] = 5<<4, tcpFlags
		binary.BigEndian.PutUint16(l4[14:], 64240)
	}
	ip := make([]byte, 20, 20+len(l4))
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(0, ip))
	pseudo := append(append(append([]byte{}, s4[:]...), d4[:]...), 0, proto, 0, byte(len(l4)))
	// The sum pads an odd length with a zero byte, as the checksum wants.
	binary.BigEndian.PutUint16(l4[sumAt:], ^onesSum(onesSum(0, pseudo), l4))
	return append(f, append(ip, l4...)...)
}

// onesSum is the IP one's-complement sum, covert's.
func onesSum(start uint16, b []byte) uint16 { return covert.Checksum(uint32(start), b) }

// Frames the host itself would discard must not count as knocks: to
// another MAC, on a VLAN the host is not on, to an address that is not the
// host's, with a bad IPv4 header checksum. A control knock from another
// address, sent after them on the same link, proves they were read.
func TestDiscardedFramesAreNotKnocks(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{noSPA: true, extra: `
[[door]]
name = "seq"
sequence = ["tcp/7000", "tcp/8000"]
seq_timeout = "5s"
open = ["tcp/22"]
duration = "30s"
`})
	r.start()
	conn, srvMAC, cliMAC := rawLink(t, r.p)
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	send := func(dstMAC net.HardwareAddr, vlan uint16, src, dst netip.Addr, badSum bool) {
		for _, p := range []uint16{7000, 8000} {
			if _, err := conn.WriteTo(syn4Frame(dstMAC, cliMAC, vlan, src, dst, p, badSum), &packet.Addr{HardwareAddr: dstMAC}); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, b, srv := r.p.Client4, r.p.Client4b, r.p.Server4
	send(other, 0, a, srv, false)                                 // another MAC
	send(srvMAC, 42, a, srv, false)                               // a foreign VLAN
	send(srvMAC, 0, a, netip.MustParseAddr("198.18.0.99"), false) // not the host's address
	send(srvMAC, 0, a, srv, true)                                 // bad header checksum
	send(srvMAC, 0, b, srv, false)                                // control
	r.out.WaitFor(t, 2*time.Second, "msg=granted language=door", "src="+b.String())
	r.waitOpen(b, srv, time.Second, "the control knock").Close()
	r.requireClosed(a, srv, "knocks in frames the host would discard")
	if strings.Contains(r.out.String(), "msg=granted language=door src="+a.String()) {
		t.Fatalf("a discarded frame counted as a knock:\n%s", r.out)
	}
	for _, reason := range []string{"not for this host", "malformed packet"} {
		if r.metric("capture", reason) == 0 {
			t.Errorf("no %q counted", reason)
		}
	}
}

// A command run as CMD_EXEC_USER has that user's groups, never the
// daemon's supplementary groups (here the daemon runs with group 4).
func TestCommandUserHasOwnGroups(t *testing.T) {
	t.Parallel()
	out, err := os.MkdirTemp("", "postern-groups")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(out)
	os.Chmod(out, 0o777)
	r := fwknopRig(t, "SOURCE ANY\nKEY_BASE64 "+fwKey+"\nHMAC_KEY_BASE64 "+fwHMAC+"\nENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\n")
	r.groups = []uint32{4}
	r.start()
	if g := r.daemonStatus("Groups"); g != "4" {
		t.Fatalf("the daemon's groups are %q; the test needs 4", g)
	}
	file := filepath.Join(out, "status")
	r.fwknop("-C", "/bin/sh -c 'cat /proc/self/status > "+file+"'", "-a", r.p.Client4.String(), "-D", r.p.Server4.String(),
		"--key-base64-rijndael", fwKey, "--key-base64-hmac", fwHMAC, "--use-hmac")
	r.out.WaitFor(t, 3*time.Second, "start command ran")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the command wrote nothing: %v\n%s", err, r.out)
	}
	var uid, groups string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid = strings.Fields(v)[0]
		}
		if v, ok := strings.CutPrefix(line, "Groups:"); ok {
			groups = strings.TrimSpace(v)
		}
	}
	if uid != "65534" || groups != "65534" {
		t.Fatalf("command ran as uid %s with groups %q; want nobody (65534) with its own group only", uid, groups)
	}
}

// An fwknop packet whose username carries a newline and a forged knockd
// log line (made with the stanza's real keys, so it decrypts) is refused,
// and nothing of it reaches the knockd LogFile unescaped.
func TestFwknopUsernameInjection(t *testing.T) {
	t.Parallel()
	r := fwknopRig(t, "SOURCE ANY\nKEY_BASE64 "+fwKey+"\nHMAC_KEY_BASE64 "+fwHMAC+"\nOPEN_PORTS tcp/22\n")
	r.start()
	key, _ := base64.StdEncoding.DecodeString(fwKey)
	hkey, _ := base64.StdEncoding.DecodeString(fwHMAC)
	raw := base64.RawStdEncoding
	enc := "1234567890123456:" + raw.EncodeToString([]byte("eve\n198.18.0.9: openSSH: OPEN SESAME")) + ":" +
		strconv.FormatInt(time.Now().Unix(), 10) + ":3.0.0:1:" + raw.EncodeToString([]byte(r.p.Client4.String()+",tcp/22"))
	sum := sha256.Sum256([]byte(enc))
	wire, err := (&fko.Keys{Key: key, HMACKey: hkey}).Seal(enc + ":" + raw.EncodeToString(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	r.sendRaw(r.p.Client4, r.p.Server4, []byte(wire))
	r.out.WaitFor(t, 2*time.Second, "msg=refused language=fwknop", "src="+r.p.Client4.String())
	r.requireClosed(r.p.Client4, r.p.Server4, "a knock with a forged username")
	if strings.Contains(r.out.String(), "OPEN SESAME") {
		t.Fatalf("the username reached the log:\n%s", r.out)
	}
}

// udp6From builds an IPv6 UDP packet with a correct checksum from any
// source address.
func udp6From(src, dst netip.Addr, dport uint16, payload []byte) []byte {
	b := make([]byte, 48+len(payload))
	binary.BigEndian.PutUint32(b[0:], 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = unix.IPPROTO_UDP, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	u := b[40:]
	binary.BigEndian.PutUint16(u[0:], 40002)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	copy(u[8:], payload)
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, 0, byte((8+len(payload))>>8), byte(8+len(payload)), 0, 0, 0, unix.IPPROTO_UDP)
	binary.BigEndian.PutUint16(u[6:], ^onesSum(onesSum(0, pseudo), u))
	return b
}

// 2 000 packets with a valid mac1 (a sniffed knock, resent) from 2 000
// addresses of one /64 get the budget of one source: all but a burst are
// refused before any public-key work.
func TestIPv6PrefixRateLimit(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.start()
	sniffed := r.sniff()
	r.knock(r.p.Server6)
	pkt := <-sniffed
	spoof := r.spoofer()
	a := netip.MustParseAddr("2001:db8::").As16()
	for i := range 2000 {
		a[12], a[13], a[14], a[15] = 0xaa, 0xbb, byte(i>>8), byte(i)
		spoof(udp6From(netip.AddrFrom16(a), r.p.Server6, knockPort, pkt))
	}
	deadline := time.Now().Add(3 * time.Second)
	for r.metric("spa", "rate limited") < 1900 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 000 rate-limited, want all but a burst; replay %d, bad mac1 %d",
				r.metric("spa", "rate limited"), r.metric("spa", "replay"), r.metric("spa", "bad mac1"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// State someone else could have written is refused at start-up (sshd's
// StrictModes): a group-writable state_dir, a state file owned by another
// user; the firewall stays closed.
func TestUntrustedStateRefused(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	state := filepath.Join(r.dir, "state")
	os.MkdirAll(state, 0o700)
	os.Chmod(state, 0o770)
	out, err := r.p.Server.Command(t.Context(), posternBin, "server", "-c", r.cfgPath).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "writable by group or others") {
		t.Fatalf("daemon with a group-writable state_dir: %v\n%s", err, out)
	}
	r.requireClosed(r.p.Client4, r.p.Server4, "after the refused start")
	os.Chmod(state, 0o700)
	pending := filepath.Join(state, "spa-timestamps")
	os.WriteFile(pending, nil, 0o600)
	os.Chown(pending, 65534, 65534)
	out, err = r.p.Server.Command(t.Context(), posternBin, "server", "-c", r.cfgPath).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "owned by uid 65534") {
		t.Fatalf("daemon with a state file owned by nobody: %v\n%s", err, out)
	}
}

// The knockd PidFile and LogFile are never written through a symbolic
// link (as root, that writes wherever it points).
// A symbolic link planted where the knockd PidFile or LogFile goes is
// never written through. The PidFile is postern's own: the link is
// replaced by the file and the daemon starts (a planted link must not
// stop it). The LogFile holds the administrator's lines: the daemon
// refuses it.
func TestSymlinkedPidAndLogFiles(t *testing.T) {
	t.Parallel()
	for _, which := range []string{"PidFile", "LogFile"} {
		t.Run(which, func(t *testing.T) {
			r := newRig(t, rigOptions{noSPA: true})
			victim := filepath.Join(r.dir, "victim")
			os.WriteFile(victim, []byte("precious\n"), 0o644)
			link := filepath.Join(r.dir, "link")
			os.Symlink(victim, link)
			pid, log := filepath.Join(r.dir, "knockd.pid"), filepath.Join(r.dir, "knockd.log")
			if which == "PidFile" {
				pid = link
			} else {
				log = link
			}
			knockd := r.writeFile("knockd.conf", fmt.Sprintf("[options]\n\tPidFile = %s\n\tLogFile = %s\n[ssh]\n\tsequence = 7000,8000\n\tcommand = true\n", pid, log))
			r.writeFile("postern.toml", fmt.Sprintf("interface = %q\nstate_dir = %q\nknockd_file = %q\n", netnstest.Interface, r.dir+"/state", knockd))
			if which == "PidFile" {
				r.start()
				st, err := os.Lstat(link)
				if err != nil || st.Mode()&os.ModeSymlink != 0 {
					t.Fatalf("the PidFile is still a link (%v)", err)
				}
				if data, _ := os.ReadFile(link); strings.TrimSpace(string(data)) != strconv.Itoa(r.daemon.Process.Pid) {
					t.Fatalf("PidFile holds %q", data)
				}
			} else {
				out, err := r.p.Server.Command(t.Context(), posternBin, "server", "-c", r.cfgPath).CombinedOutput()
				if err == nil {
					t.Fatalf("daemon started with a symlinked %s:\n%s", which, out)
				}
			}
			if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
				t.Fatalf("written through the link: %q", data)
			}
		})
	}
}

// --key-gen-file makes a file only its owner may read, also over an
// existing file with a looser mode; a group-readable ~/.fwknoprc gets
// fwknop's warning.
func TestFwknopKeyFileModes(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	os.WriteFile(keys, nil, 0o644)
	if out, err := exec.Command(posternBin, "fwknop", "--key-gen-file", keys).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if st, _ := os.Stat(keys); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", st.Mode().Perm())
	}
	rc := filepath.Join(dir, "fwknoprc")
	os.WriteFile(rc, []byte("[default]\nKEY_BASE64 "+fwKey+"\n"), 0o644)
	out, _ := exec.Command(posternBin, "fwknop", "--rc-file", rc, "-A", "tcp/22", "-a", "198.18.0.2", "-D", "198.18.0.1", "-T").CombinedOutput()
	if !strings.Contains(string(out), "permissions should only be user read/write") {
		t.Fatalf("no warning about a group-readable rc file:\n%s", out)
	}
}
