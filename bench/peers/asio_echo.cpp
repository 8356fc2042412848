// Boost.Asio async echo, one io_context thread: the classic session pattern.
// Each session reads into its own buffer, async_write sends all of it (Asio
// finishes short writes), then reads again; end of stream or an error ends it.
#include <boost/asio.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

using boost::asio::ip::tcp;

namespace
{

constexpr std::size_t kBufSize = 16 * 1024;

class Session : public std::enable_shared_from_this<Session>
{
  public:
    explicit Session(tcp::socket socket) : socket_(std::move(socket)) {}

    void start() { read(); }

  private:
    void read()
    {
        auto self = shared_from_this();
        socket_.async_read_some(boost::asio::buffer(buf_),
                                [this, self](boost::system::error_code ec, std::size_t n) {
                                    if (!ec)
                                        write(n);
                                });
    }

    void write(std::size_t n)
    {
        auto self = shared_from_this();
        boost::asio::async_write(socket_, boost::asio::buffer(buf_, n),
                                 [this, self](boost::system::error_code ec, std::size_t) {
                                     if (!ec)
                                         read();
                                 });
    }

    tcp::socket socket_;
    std::array<char, kBufSize> buf_;
};

void accept(tcp::acceptor &acceptor)
{
    acceptor.async_accept([&acceptor](boost::system::error_code ec, tcp::socket socket) {
        if (!ec) {
            boost::system::error_code ignored;
            socket.set_option(tcp::no_delay(true), ignored);
            std::make_shared<Session>(std::move(socket))->start();
        }
        accept(acceptor);
    });
}

unsigned short parse_port(int argc, char **argv)
{
    if (argc == 3 && std::strcmp(argv[1], "--port") == 0)
        return static_cast<unsigned short>(std::atoi(argv[2]));
    if (argc != 1) {
        std::fprintf(stderr, "usage: %s [--port P]\n", argv[0]);
        std::exit(2);
    }
    return 0;
}

} // namespace

int main(int argc, char **argv)
{
    try {
        boost::asio::io_context io(1);
        tcp::endpoint ep(boost::asio::ip::make_address("127.0.0.1"), parse_port(argc, argv));
        tcp::acceptor acceptor(io);
        acceptor.open(ep.protocol());
        acceptor.set_option(tcp::acceptor::reuse_address(true));
        acceptor.bind(ep);
        acceptor.listen(4096);
        std::printf("listening on 127.0.0.1:%u\n", acceptor.local_endpoint().port());
        std::fflush(stdout);
        accept(acceptor);
        io.run();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "asio_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
