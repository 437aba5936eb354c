//! Tests of `resp_frame.rs`, kept beside it so that the reader itself stays one
//! screenful of jobs: every frame kind, every split point, skipping what is too large,
//! protocol errors, inline commands, and a seeded round trip of random commands.

use super::*;

/// A frame, owned, so frames from different reads can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Command(Vec<Vec<u8>>),
    TooLarge,
    Error(&'static str),
}

fn own(frame: RespFrame<'_>) -> Got {
    match frame {
        RespFrame::Command(args) => Got::Command(args.iter().map(<[u8]>::to_vec).collect()),
        RespFrame::TooLarge => Got::TooLarge,
        RespFrame::ProtocolError(text) => Got::Error(text),
    }
}

fn command(args: &[&[u8]]) -> Got {
    Got::Command(args.iter().map(|arg| arg.to_vec()).collect())
}

fn drain(reader: &mut RespReader, out: &mut Vec<Got>) {
    while let Some(frame) = reader.next_frame() {
        out.push(own(frame));
    }
}

/// Feeds `input` in chunks of the given sizes (cycled), draining after each.
fn frames_in_chunks(reader: &mut RespReader, input: &[u8], sizes: &[usize]) -> Vec<Got> {
    let mut out = Vec::new();
    let mut rest = input;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let mut chunk = &rest[..size.min(rest.len())];
        rest = &rest[chunk.len()..];
        while !chunk.is_empty() {
            let taken = reader.push(chunk);
            chunk = &chunk[taken..];
            drain(reader, &mut out);
        }
    }
    out
}

fn frames(input: &[u8]) -> Vec<Got> {
    frames_in_chunks(&mut RespReader::new(1024, 4096), input, &[usize::MAX])
}

/// `args` as a multibulk request.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn a_multibulk_command_is_read() {
    assert_eq!(frames(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"), [command(&[b"GET", b"key"])]);
    assert_eq!(frames(b"*1\r\n$0\r\n\r\n"), [command(&[b""])]);
}

#[test]
fn args_are_borrowed_and_indexed() {
    let mut reader = RespReader::new(1024, 4096);
    reader.push(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
    let Some(RespFrame::Command(args)) = reader.next_frame() else { panic!("no command") };
    assert_eq!((args.len(), args.is_empty()), (3, false));
    assert_eq!((args.get(0), args.get(2), args.get(3)), (Some(&b"SET"[..]), Some(&b"vv"[..]), None));
    assert_eq!(format!("{args:?}"), r#"["SET", "k", "vv"]"#);
    assert_eq!(reader.next_frame(), None);
    assert!(!reader.has_partial());
}

#[test]
fn bulks_are_binary_safe() {
    let value = b"a\r\nb\0\n\r*1\r\n$3\r\n";
    assert_eq!(frames(&encode(&[b"SET", b"k", value])), [command(&[b"SET", b"k", value])]);
}

#[test]
fn pipelined_commands_come_out_one_by_one() {
    let input = [encode(&[b"PING"]), encode(&[b"GET", b"k"]), b"PING\r\n".to_vec()].concat();
    let expected = [command(&[b"PING"]), command(&[b"GET", b"k"]), command(&[b"PING"])];
    assert_eq!(frames(&input), expected);
}

#[test]
fn every_split_point_gives_the_same_frames() {
    let mut input = [encode(&[b"SET", b"k", b"v\r\n"]), b"*0\r\n*-1\r\n".to_vec()].concat();
    input.extend_from_slice(&encode(&[b"SET", b"k", &[b'x'; 40]]));
    input.extend_from_slice(b"  GET   \"a b\"\t'c'\r\n\r\n\nPING\n");
    input.extend_from_slice(&encode(&[b"DEL", b"k"]));
    let whole = frames_in_chunks(&mut RespReader::new(32, 4096), &input, &[usize::MAX]);
    assert_eq!(whole.len(), 5, "{whole:?}");
    assert_eq!(whole[1], Got::TooLarge);
    assert_eq!(whole[2], command(&[b"GET", b"a b", b"c"]));
    for size in 1..8 {
        let chunked = frames_in_chunks(&mut RespReader::new(32, 4096), &input, &[size]);
        assert_eq!(chunked, whole, "chunks of {size}");
    }
    for cut in 0..input.len() {
        let sizes = [cut.max(1), usize::MAX];
        assert_eq!(frames_in_chunks(&mut RespReader::new(32, 4096), &input, &sizes), whole, "cut {cut}");
    }
}

#[test]
fn a_partial_command_waits_for_more() {
    let mut reader = RespReader::new(1024, 4096);
    reader.push(b"*2\r\n$3\r\nGET\r\n$3\r\nke");
    assert_eq!(reader.next_frame(), None);
    assert!(reader.has_partial());
    reader.push(b"y\r");
    assert_eq!(reader.next_frame(), None);
    reader.push(b"\n");
    assert_eq!(reader.next_frame().map(own), Some(command(&[b"GET", b"key"])));
    assert!(!reader.has_partial());
}

#[test]
fn empty_multibulks_are_skipped() {
    assert_eq!(frames(b"*0\r\n*-1\r\n*-7\r\nPING\r\n"), [command(&[b"PING"])]);
}

#[test]
fn inline_commands_are_split_on_whitespace() {
    assert_eq!(frames(b"PING\r\n"), [command(&[b"PING"])]);
    assert_eq!(frames(b"PING\n"), [command(&[b"PING"])]);
    assert_eq!(frames(b"  SET \t k  v \r\n"), [command(&[b"SET", b"k", b"v"])]);
    assert_eq!(frames(b"\r\n\n   \r\nPING\n"), [command(&[b"PING"])]);
    assert_eq!(frames(b"GET\rk\n"), [command(&[b"GET", b"k"])]);
}

#[test]
fn inline_quotes_and_escapes_read_as_redis_reads_them() {
    assert_eq!(frames(b"SET \"a b\" 'c d'\n"), [command(&[b"SET", b"a b", b"c d"])]);
    assert_eq!(frames(b"SET \"\\x41\\n\\t\\\"\\\\\\q\" ''\n"), [command(&[b"SET", b"A\n\t\"\\q", b""])]);
    assert_eq!(frames(b"SET 'it\\'s' \"\\xZZ\"\n"), [command(&[b"SET", b"it's", b"xZZ"])]);
    assert_eq!(frames(b"SET a\"b c\"d\n"), [Got::Error("unbalanced quotes in request")]);
    assert_eq!(frames(b"SET a\"b c\" d\n"), [command(&[b"SET", b"ab c", b"d"])]);
    assert_eq!(frames(b"SET \"abc\n"), [Got::Error("unbalanced quotes in request")]);
    assert_eq!(frames(b"SET 'abc\\'\n"), [Got::Error("unbalanced quotes in request")]);
}

#[test]
fn multibulk_errors_are_protocol_errors() {
    for (input, text) in [
        (&b"*x\r\n"[..], "invalid multibulk length"),
        (b"*\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*1\n", "invalid multibulk length"),
        (b"*1048577\r\n", "invalid multibulk length"),
        (b"*99999999999999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n:1\r\n", "expected '$'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nabcd\r\n", "expected CRLF after bulk data"),
        (b"*1\r\n$3\r\nabc\n\r", "expected CRLF after bulk data"),
    ] {
        assert_eq!(frames(input), [Got::Error(text)], "{:?}", String::from_utf8_lossy(input));
    }
    assert_eq!(frames(b"*1048576\r\n"), []);
}

#[test]
fn endless_headers_are_refused_without_buffering() {
    let digits = [&b"*"[..], &[b'1'; 100]].concat();
    assert_eq!(frames(&digits), [Got::Error("too big mbulk count string")]);
    let digits = [&b"*1\r\n$"[..], &[b'1'; 100]].concat();
    assert_eq!(frames(&digits), [Got::Error("too big bulk count string")]);
}

#[test]
fn nothing_is_read_after_a_protocol_error() {
    let mut reader = RespReader::new(1024, 4096);
    reader.push(b"*1\r\n!\r\nPING\r\n");
    assert_eq!(reader.next_frame(), Some(RespFrame::ProtocolError("expected '$'")));
    assert_eq!(reader.next_frame(), None);
    for _ in 0..100 {
        reader.push(&[b'x'; 1000]);
        assert_eq!(reader.next_frame(), None);
    }
    assert!(!reader.has_partial());
    assert_eq!(reader.buf.len(), INITIAL_READ_BUFFER, "nothing is kept after an error");
}

#[test]
fn a_too_large_bulk_is_skipped_and_the_next_command_read() {
    let big = vec![b'x'; 100];
    let input = [encode(&[b"SET", b"k", &big, b"more"]), encode(&[b"GET", b"k"])].concat();
    let expected = [Got::TooLarge, command(&[b"GET", b"k"])];
    assert_eq!(frames_in_chunks(&mut RespReader::new(50, 4096), &input, &[usize::MAX]), expected);
    assert_eq!(frames_in_chunks(&mut RespReader::new(50, 4096), &input, &[3, 17]), expected);
}

#[test]
fn a_command_over_its_total_limit_is_too_large() {
    let arg = vec![b'y'; 30];
    let input = [encode(&[b"MSET", &arg, &arg, &arg, &arg]), encode(&[b"PING"])].concat();
    let expected = [Got::TooLarge, command(&[b"PING"])];
    assert_eq!(frames_in_chunks(&mut RespReader::new(50, 100), &input, &[usize::MAX]), expected);
    assert_eq!(frames_in_chunks(&mut RespReader::new(50, 100), &input, &[1]), expected);
    // Exactly at the limit passes.
    let fits = encode(&[b"MSET", &arg, &arg]);
    let fits_args = command(&[b"MSET", &arg, &arg]);
    assert_eq!(frames_in_chunks(&mut RespReader::new(50, fits.len()), &fits, &[usize::MAX]), [fits_args]);
}

#[test]
fn a_malformed_skipped_command_is_still_a_protocol_error() {
    let input = [&b"*2\r\n$5\r\nhello!!"[..], b"$1\r\nx\r\n"].concat();
    let got = frames_in_chunks(&mut RespReader::new(3, 4096), &input, &[usize::MAX]);
    assert_eq!(got, [Got::TooLarge, Got::Error("expected CRLF after bulk data")]);
    let got = frames_in_chunks(&mut RespReader::new(3, 4096), b"*2\r\n$5\r\nhello\r\n+1\r\n", &[2]);
    assert_eq!(got, [Got::TooLarge, Got::Error("expected '$'")]);
}

/// A `Read` handing out at most `chunk` bytes per call.
struct Trickle<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(out.len()).min(self.rest.len());
        out[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn read_all(reader: &mut RespReader, source: &mut impl Read, mut check: impl FnMut(&RespReader)) -> Vec<Got> {
    let mut out = Vec::new();
    while reader.fill_from(source).unwrap() > 0 {
        drain(reader, &mut out);
        check(reader);
    }
    out
}

#[test]
fn skipping_a_huge_bulk_does_not_grow_the_buffer() {
    let max_value = 1024 * 1024;
    let huge = vec![b'h'; 10 * max_value];
    let input = [encode(&[b"SET", b"k", &huge]), encode(&[b"GET", b"k"])].concat();
    let mut reader = RespReader::new(max_value, 2 * max_value);
    let mut source = Trickle { rest: &input, chunk: usize::MAX };
    let got = read_all(&mut reader, &mut source, |reader| assert!(reader.buf.capacity() < max_value));
    assert_eq!(got, [Got::TooLarge, command(&[b"GET", b"k"])]);
    assert!(reader.buf.len() <= READ_AHEAD_MAX);
}

#[test]
fn a_one_mib_bulk_in_small_reads_completes() {
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let input = [encode(&[b"SET", b"k", &value]), encode(&[b"PING"])].concat();
    let mut reader = RespReader::new(value.len(), value.len() + 100);
    let mut source = Trickle { rest: &input, chunk: 4096 };
    let got = read_all(&mut reader, &mut source, |_| {});
    assert_eq!(got, [command(&[b"SET", b"k", &value]), command(&[b"PING"])]);
    assert!(reader.buf.len() <= reader.hold_limit(), "{}", reader.buf.len());
}

#[test]
fn a_grown_buffer_goes_back_to_its_first_size_only_when_empty() {
    let mut reader = RespReader::new(100_000, 200_000);
    let value = vec![b'v'; 50_000];
    let input = [encode(&[b"SET", b"k", &value]), b"*1\r\n$4\r\nPI".to_vec()].concat();
    let got = frames_in_chunks(&mut reader, &input, &[usize::MAX]);
    assert_eq!(got, [command(&[b"SET", b"k", &value])]);
    assert!(reader.has_partial());
    assert!(!reader.holds_grown_buffer(), "a partial command is kept");
    reader.release_buffer();
    reader.push(b"NG\r\n");
    assert_eq!(reader.next_frame().map(own), Some(command(&[b"PING"])));
    assert!(reader.holds_grown_buffer());
    reader.release_buffer();
    assert_eq!(reader.buf.len(), INITIAL_READ_BUFFER);
    assert!(!reader.holds_grown_buffer());
    reader.push(b"PING\n");
    assert_eq!(reader.next_frame().map(own), Some(command(&[b"PING"])));
}

#[test]
fn many_arguments_grow_the_span_list_which_is_given_back() {
    let args: Vec<&[u8]> = vec![b"a"; 1000];
    let mut reader = RespReader::new(100, 100_000);
    assert_eq!(frames_in_chunks(&mut reader, &encode(&args), &[usize::MAX]), [command(&args)]);
    assert!(reader.holds_grown_buffer());
    reader.release_buffer();
    assert!(reader.spans.capacity() <= SPANS_KEPT);
}

#[test]
fn an_http_request_line_is_an_inline_command() {
    assert_eq!(
        frames(b"GET / HTTP/1.1\r\nHost: x\r\n"),
        [command(&[b"GET", b"/", b"HTTP/1.1"]), command(&[b"Host:", b"x"])]
    );
}

#[test]
fn a_tls_client_hello_is_bounded_by_the_inline_limit() {
    let hello: Vec<u8> =
        [&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03][..], &[0xab; 100_000]].concat();
    let mut reader = RespReader::new(1024 * 1024, 1024 * 1024);
    let mut source = Trickle { rest: &hello, chunk: 1500 };
    let got = read_all(&mut reader, &mut source, |reader| assert!(reader.buf.len() <= 2 * MAX_INLINE));
    assert_eq!(got, [Got::Error("too big inline request")]);
}

#[test]
fn an_inline_line_at_the_limit_passes_and_one_over_fails() {
    let at = [&b"A "[..], &vec![b'x'; MAX_INLINE - 3], b"\r\n"].concat();
    let mut reader = RespReader::new(MAX_INLINE, 1024);
    assert!(
        matches!(frames_in_chunks(&mut reader, &at, &[1000]).as_slice(), [Got::Command(args)] if args.len() == 2)
    );
    let over = [&b"A "[..], &vec![b'x'; MAX_INLINE - 1], b"\n"].concat();
    assert_eq!(frames(&over), [Got::Error("too big inline request")]);
}

#[test]
fn an_inline_line_end_is_not_counted_in_the_limit() {
    let words = [&b"A "[..], &vec![b'x'; MAX_INLINE - 2]].concat();
    for end in [&b"\r\n"[..], b"\n"] {
        let line = [&words[..], end, b"PING\r\n"].concat();
        for sizes in [&[usize::MAX][..], &[1000], &[MAX_INLINE + 1, 1]] {
            let got = frames_in_chunks(&mut RespReader::new(MAX_INLINE, 1024), &line, sizes);
            let lens: Vec<usize> =
                got.iter().map(|got| if let Got::Command(args) = got { args.len() } else { 0 }).collect();
            assert_eq!(lens, [2, 1], "{end:?} in chunks of {sizes:?}");
        }
    }
    let over = [&words[..], b"x\r\n"].concat();
    assert_eq!(frames(&over), [Got::Error("too big inline request")]);
    let over = [&words[..], b"\rx"].concat();
    assert_eq!(frames(&over), [Got::Error("too big inline request")]);
}

#[test]
fn numbers_are_read_as_redis_reads_them() {
    assert_eq!(parse_number(b"0"), Some(0));
    assert_eq!(parse_number(b"-12"), Some(-12));
    assert_eq!(parse_number(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_number(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [&b""[..], b"-", b"-0", b"007", b"+1", b" 1", b"1 ", b"9223372036854775808"] {
        assert_eq!(parse_number(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

/// SplitMix64, as in tests/fuzzing/mod.rs: seeded, so a failure reruns the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_commands_in_random_chunks_come_back_identical() {
    let mut rng = Rng(0x5eed_c0de);
    for _ in 0..50 {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..rng.below(40) + 1 {
            let args: Vec<Vec<u8>> = (0..rng.below(6) + 1)
                .map(|_| {
                    let len = if rng.below(10) == 0 { rng.below(3000) } else { rng.below(12) };
                    (0..len).map(|_| rng.next() as u8).collect()
                })
                .collect();
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            input.extend_from_slice(&encode(&refs));
            expected.push(Got::Command(args));
        }
        let sizes: Vec<usize> = (0..16).map(|_| rng.below(200) + 1).collect();
        let mut reader = RespReader::new(4096, 64 * 1024);
        assert_eq!(frames_in_chunks(&mut reader, &input, &sizes), expected);
        assert!(!reader.has_partial());
    }
}

#[test]
fn a_long_span_list_is_given_back_without_a_small_grown_buffer() {
    let args: Vec<&[u8]> = vec![b"abcdefghijklmnop"; 40];
    let mut reader = RespReader::new(100, 100_000);
    assert_eq!(frames_in_chunks(&mut reader, &encode(&args), &[usize::MAX]), [command(&args)]);
    let grown = reader.buf.len();
    assert!(grown > INITIAL_READ_BUFFER, "the command grew the buffer: {grown}");
    assert!(reader.holds_grown_buffer(), "40 spans are more than are kept");
    reader.release_buffer();
    assert!(reader.spans.capacity() <= SPANS_KEPT);
    assert_eq!(reader.buf.len(), grown, "a buffer under KEPT_WHEN_IDLE stays");
}

#[test]
fn an_announced_bulk_grows_the_buffer_only_as_its_bytes_arrive() {
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let ping = encode(&[b"PING"]);
    let input = [encode(&[b"SET", b"k", &value]), ping.clone()].concat();
    let header_len = input.len() - value.len() - 2 - ping.len();
    let mut reader = RespReader::new(2 * value.len(), 4 * value.len());
    // The header announcing 1 MiB and a few bytes of it, then the client waits.
    let waits_at = header_len + 300;
    let mut source = Trickle { rest: &input[..waits_at], chunk: 100 };
    assert_eq!(read_all(&mut reader, &mut source, |_| {}), []);
    assert!(reader.has_partial());
    assert!(reader.buf.capacity() < 64 * 1024, "{} bytes held for 300 sent", reader.buf.capacity());
    // The rest in pieces: the bulk is whole, and the buffer doubling toward it stops
    // at its end.
    let mut source = Trickle { rest: &input[waits_at..], chunk: 4096 };
    let got = read_all(&mut reader, &mut source, |reader| assert!(reader.buf.len() <= input.len()));
    assert_eq!(got, [command(&[b"SET", b"k", &value]), command(&[b"PING"])]);
}

#[test]
fn an_absurd_bulk_length_is_a_protocol_error() {
    for header in [&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9223372036854775807\r\n"[..], b"*1\r\n$536870913\r\n"] {
        let input = [header, b"abc*1\r\n$4\r\nPING\r\n"].concat();
        assert_eq!(
            frames(&input),
            [Got::Error("invalid bulk length")],
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
    // Past the first too-large bulk, the skipped ones are held to the same bound.
    let input = b"*3\r\n$3\r\nSET\r\n$2000\r\n".iter().chain(&[b'x'; 2000]).chain(b"\r\n$9999999999\r\n");
    let input: Vec<u8> = input.copied().collect();
    assert_eq!(frames(&input), [Got::TooLarge, Got::Error("invalid bulk length")]);
    // At the bound the bulk is too large, skipped, and the next command read.
    let at = format!("*2\r\n$3\r\nSET\r\n${MAX_BULK}\r\n");
    let mut reader = RespReader::new(1024, 4096);
    assert_eq!(frames_in_chunks(&mut reader, at.as_bytes(), &[usize::MAX]), [Got::TooLarge]);
    assert!(reader.has_partial());
}

#[test]
fn an_inline_argument_over_max_value_is_too_large_and_the_next_line_read() {
    let mut reader = RespReader::new(100, 4096);
    let big = [&b"SET big "[..], &[b'v'; 101], b"\r\nHSET h f ", &[b'w'; 6000], b"\r\nSET k "].concat();
    let input = [&big[..], &[b'v'; 100], b"\r\nPING\r\n"].concat();
    let got = frames_in_chunks(&mut reader, &input, &[7, 300]);
    assert_eq!(got[..2], [Got::TooLarge, Got::TooLarge]);
    assert_eq!(got[2..], [command(&[b"SET", b"k", &[b'v'; 100]]), command(&[b"PING"])]);
}
