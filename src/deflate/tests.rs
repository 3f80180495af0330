//! Negotiation, the codecs, and the budget, each on its own.

use super::codec::TAIL;
use super::*;

const CONFIG: Deflate = Deflate {
    min_size: 0,
    level: 1,
    context_takeover: false,
};

/// `negotiate` with a budget of its own, of `max` places.
fn negotiate<'h>(values: impl IntoIterator<Item = &'h str>, config: Deflate) -> Option<Agreed> {
    super::negotiate(values, config, &Arc::default(), 16)
}

#[test]
fn offers_are_accepted_declined_or_chosen_among() {
    let config = CONFIG;
    let answer = |v: &str| negotiate([v], config).map(|a| a.response);
    let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    assert_eq!(answer("permessage-deflate").as_deref(), Some(plain));
    // What browsers send.
    assert_eq!(
        answer("permessage-deflate; client_max_window_bits").as_deref(),
        Some(&*format!("{plain}; client_max_window_bits=15"))
    );
    assert_eq!(
        answer("permessage-deflate; client_max_window_bits=10; server_no_context_takeover")
            .as_deref(),
        Some(plain)
    );
    // A smaller window for this server: agreed, and nothing compressed.
    let small = negotiate(["permessage-deflate; server_max_window_bits=10"], config);
    assert_eq!(
        small.as_ref().map(|a| a.response.as_str()),
        Some(&*format!("{plain}; server_max_window_bits=10"))
    );
    assert_eq!(small.and_then(|a| a.compress), None);
    let full = negotiate(["permessage-deflate; server_max_window_bits=15"], config);
    assert_eq!(full.and_then(|a| a.compress), Some(config));
    // Declined: unknown, repeated, bad values.
    for bad in [
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(answer(bad), None, "{bad}");
    }
    // The first acceptable of several offers, across header values.
    let chosen = negotiate(
        ["permessage-deflate; foo, permessage-deflate; client_max_window_bits"],
        config,
    );
    assert!(chosen.is_some_and(|a| a.response.ends_with("client_max_window_bits=15")));
    let chosen = negotiate(
        ["foo", "permessage-deflate; client_no_context_takeover"],
        config,
    );
    assert_eq!(chosen.map(|a| a.response).as_deref(), Some(plain));
}

#[test]
fn a_message_survives_the_trip_and_compresses() {
    let text = br#"{"type":"message","channel":"prices","data":{"px":101.25}}"#.repeat(20);
    let small = compress(&text, 1);
    assert!(
        small.len() < text.len() / 4,
        "{} of {}",
        small.len(),
        text.len()
    );
    assert!(!small.ends_with(&TAIL));
    assert_eq!(inflate(&small, 1 << 20).unwrap(), text);
    // The same bytes every time: one compressed frame serves every recipient.
    assert_eq!(compress(&text, 1), small);
    assert_eq!(inflate(&compress(b"", 1), 10).unwrap(), b"");
}

#[test]
fn poorly_compressible_messages_survive_whole() {
    // 5 bits of noise per byte: compressed to about 70 %, so the output
    // outgrows a half-size buffer; at these lengths a flush cut short by
    // it once went missing (the message came back shorter).
    let mut x: u32 = 12345;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8 & 0x1f
        })
        .collect();
    for len in [100, 1000, 16_384, 58_971, 60_970, 65_536, 116_942, 200_000] {
        let payload = &noise[..len];
        for level in [1, 6, 9] {
            let compressed = compress(payload, level);
            assert_eq!(
                inflate(&compressed, 1 << 20).unwrap(),
                payload,
                "{len} at {level}"
            );
        }
    }
}

#[test]
fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
    let zeros = vec![0u8; 8 << 20];
    let bomb = compress(&zeros, 9);
    assert!(bomb.len() < 64 << 10);
    assert_eq!(inflate(&bomb, 1 << 20), Err(Inflate::TooBig));
    assert_eq!(inflate(&bomb, 8 << 20).map(|v| v.len()), Ok(8 << 20));
    assert_eq!(
        inflate(&[0xff, 0xff, 0xff, 0x00], 1 << 20),
        Err(Inflate::Corrupt)
    );
}

#[test]
fn context_is_kept_where_the_route_allows_it_within_the_budget() {
    let config = Deflate {
        context_takeover: true,
        ..CONFIG
    };
    let budget = Arc::default();
    let offer = |v: &str| super::negotiate([v], config, &budget, 1);
    // The first connection keeps context both ways: nothing to say.
    let first = offer("permessage-deflate; client_max_window_bits").unwrap();
    assert_eq!(
        first.response,
        "permessage-deflate; client_max_window_bits=15"
    );
    assert!(first.server_context && first.client_context && first.slot.is_some());
    assert_eq!(first.shared_compress(), None);
    // The budget is spent: the next gets the terms without context.
    let second = offer("permessage-deflate").unwrap();
    assert_eq!(
        second.response,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert!(!second.server_context && !second.client_context && second.slot.is_none());
    assert_eq!(second.shared_compress(), Some(config));
    drop(first);
    // A client that refuses one side keeps the other.
    let third = offer("permessage-deflate; client_no_context_takeover").unwrap();
    assert_eq!(
        third.response,
        "permessage-deflate; client_no_context_takeover"
    );
    assert!(third.server_context && !third.client_context);
    drop(third);
    // Refusing both needs no place; a small window for this server means
    // nothing compressed, so only the client's side keeps context.
    let fourth = offer("permessage-deflate; server_max_window_bits=10").unwrap();
    assert_eq!(
        fourth.response,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    );
    assert!(!fourth.server_context && fourth.client_context && fourth.compress.is_none());
    // A route without it never keeps context.
    let plain = super::negotiate(["permessage-deflate"], CONFIG, &budget, 100).unwrap();
    assert!(plain.slot.is_none() && !plain.server_context && !plain.client_context);
}

#[test]
fn with_context_later_messages_build_on_earlier_ones() {
    let config = Deflate {
        context_takeover: true,
        ..CONFIG
    };
    let message = br#"{"type":"message","channel":"prices","data":{"px":101.25,"qty":7}}"#;
    let mut deflater = Deflater::new(config);
    let mut inflater = Inflater::new(1 << 20);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let compressed = deflater.compress(message).unwrap();
        sizes.push(compressed.len());
        inflater.next_message();
        assert_eq!(inflater.whole(&compressed).unwrap(), message);
        assert_eq!(
            inflater.totals(),
            (compressed.len() as u64, message.len() as u64)
        );
    }
    // The repeats refer back to the first: a fraction of its size.
    assert!(
        sizes[1] * 3 < sizes[0] && sizes[2] * 3 < sizes[0],
        "{sizes:?}"
    );
    // Without context each is as large as the first.
    assert_eq!(compress(message, 1).len(), sizes[0]);
    // Under the minimum size, nothing goes through the compressor.
    let mut picky = Deflater::new(Deflate {
        min_size: 1000,
        ..config
    });
    assert_eq!(picky.compress(message), None);
}

#[test]
fn the_upstream_offer_mirrors_the_client_and_its_answer_is_checked() {
    let config = Deflate {
        context_takeover: true,
        ..CONFIG
    };
    let budget = Arc::default();
    let kept = super::negotiate(
        ["permessage-deflate; server_max_window_bits=12"],
        config,
        &budget,
        1,
    );
    let offer = upstream_offer(kept.as_ref());
    assert_eq!(
        offer,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    );
    let none = upstream_offer(None);
    assert_eq!(
        none,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    let answer = |values: &[&str], offer: &str| upstream_agreed(values.iter().copied(), offer);
    assert_eq!(answer(&[], &none), Ok(None));
    let agreed = UpstreamAgreed {
        client_no_context: false,
        server_no_context: true,
        window_unsettled: false,
    };
    let plain = Some(agreed);
    assert_eq!(
        answer(&["permessage-deflate; server_no_context_takeover"], &none),
        Ok(plain)
    );
    assert_eq!(
        answer(
            &["Permessage-Deflate; Server_No_Context_Takeover; client_no_context_takeover"],
            &none
        ),
        Ok(Some(UpstreamAgreed {
            client_no_context: true,
            server_no_context: true,
            window_unsettled: false,
        }))
    );
    assert_eq!(
        answer(
            &["permessage-deflate; server_no_context_takeover; server_max_window_bits=\"10\""],
            &offer
        ),
        Ok(plain)
    );
    // Asked for a window of 12, it says nothing of one: agreed, unsettled.
    assert_eq!(
        answer(&["permessage-deflate; server_no_context_takeover"], &offer),
        Ok(Some(UpstreamAgreed {
            window_unsettled: true,
            ..agreed
        }))
    );
    for bad in [
        "permessage-deflate",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=13",
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover; foo",
        "permessage-deflate; server_no_context_takeover, permessage-deflate",
        "x-webkit-deflate-frame",
    ] {
        let offered = if bad.contains("=13") { &offer } else { &none };
        assert!(answer(&[bad], offered).is_err(), "{bad}");
    }
}

/// Bits as DEFLATE writes them: into bytes from the lowest bit up.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    used: u32,
}

impl Bits {
    /// `n` bits of `value`, lowest first (header fields, extra bits).
    fn put(&mut self, value: u32, n: u32) {
        for i in 0..n {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((value >> i) & 1) as u8;
            *self.bytes.last_mut().unwrap() |= bit << (self.used % 8);
            self.used += 1;
        }
    }

    /// A Huffman code of `n` bits, highest first.
    fn code(&mut self, value: u32, n: u32) {
        for i in (0..n).rev() {
            self.put((value >> i) & 1, 1);
        }
    }
}

#[test]
fn a_kept_window_outlives_a_final_block() {
    // The first message ends its stream with a final block (allowed); the
    // second refers back 20 bytes into it, for 10.
    let first = b"abcdefghijklmnopqrstuvwxyz";
    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut ended = Vec::with_capacity(256);
    c.compress_vec(first, &mut ended, flate2::FlushCompress::Finish)
        .unwrap();
    let mut second = Bits::default();
    second.put(1, 1); // BFINAL
    second.put(1, 2); // fixed Huffman codes
    second.code(0b000_1000, 7); // length 10 (code 264)
    second.code(0b01000, 5); // distance code 8: 17-24
    second.put(3, 3); // + 3: distance 20
    second.code(0, 7); // end of block
    let mut inflater = Inflater::kept(1 << 20);
    for (message, expected) in [(&ended, &first[..]), (&second.bytes, b"ghijklmnop")] {
        inflater.next_message();
        assert_eq!(inflater.whole(message).unwrap(), expected);
    }
}
