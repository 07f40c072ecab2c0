//! Large zeroed output buffers (a site's crops: tens of MB) that ask Linux for transparent huge
//! pages before the first write.
//!
//! A fresh buffer of that size comes straight from `mmap`; filling it page faults once per 4 KiB
//! page, and in a container each fault also charges the memory cgroup: on a 5 x 1080 x 1080 site
//! with ~160 crops of 5 x 128 x 128 float32 those faults were ~18 % of `crop_site`'s time (perf on a
//! 2-core Intel Xeon). With `madvise(MADV_HUGEPAGE)` the kernel maps 2 MiB pages instead (when
//! transparent huge pages are `always` or `madvise`, the default of common distributions), 512x
//! fewer faults; elsewhere the hint is a no-op. The buffer is an ordinary `Vec` either way (handed
//! to numpy without a copy) and its contents are not affected.
//!
//! With `defrag` set to `madvise` the kernel may compact memory to find a huge page for a hinted
//! buffer, which on a long-running host with fragmented memory can stall a fault; set
//! `PHENOVEC_HUGE_PAGES=0` (or `off`, `false`, `no`) to drop the hint.
use std::sync::OnceLock;

/// Smallest buffer worth the hint (bytes): one huge page.
const HUGE_PAGE: usize = 2 << 20;

/// `vec![T::default(); len]` (all zeros for the number types used here) with a huge-page hint.
pub fn zeroed<T: Copy + Default>(len: usize) -> Vec<T> {
    let mut v = vec![T::default(); len];
    hint_huge_pages(&mut v);
    v
}

/// Ask the kernel to back the whole pages inside `v` with huge pages (Linux; no-op elsewhere or
/// when the kernel refuses: the hint never fails an allocation).
fn hint_huge_pages<T>(v: &mut [T]) {
    let bytes = std::mem::size_of_val(v);
    if bytes < HUGE_PAGE || !hint_enabled() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let a = v.as_mut_ptr() as usize;
        let (start, end) = (a.div_ceil(PAGE) * PAGE, (a + bytes) / PAGE * PAGE);
        if end > start {
            // SAFETY: [start, end) lies inside `v`'s allocation and is page aligned; MADV_HUGEPAGE
            // only changes how the kernel backs those pages, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Whether `PHENOVEC_HUGE_PAGES` (read once) allows the hint.
fn hint_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| enabled_by(std::env::var("PHENOVEC_HUGE_PAGES").ok().as_deref()))
}

/// The hint is on unless the variable says `0`, `off`, `false` or `no` (any case, spaces trimmed).
fn enabled_by(value: Option<&str>) -> bool {
    !matches!(value.map(|v| v.trim().to_ascii_lowercase()).as_deref(), Some("0" | "off" | "false" | "no"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_zero_and_writable() {
        for len in [0usize, 1, 1000, 3 << 20] {
            let mut v: Vec<f32> = zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
        let u: Vec<u16> = zeroed(5 << 20);
        assert!(u.iter().all(|&x| x == 0));
    }

    #[test]
    fn the_variable_turns_the_hint_off() {
        assert!(enabled_by(None));
        assert!(enabled_by(Some("1")) && enabled_by(Some("yes")) && enabled_by(Some("")));
        for off in ["0", "off", "OFF", " false ", "No"] {
            assert!(!enabled_by(Some(off)), "{off}");
        }
    }
}
